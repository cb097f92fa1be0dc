"""Search and detection evaluation with the standard PRW / CUHK-SYSU protocols (protocols.md)."""
from pipeline.evaluation.evaluator import SearchEvaluation, SearchEvaluator, evaluate_search
from pipeline.evaluation.results_file import ResultsFileError, SearchResults, read_results, \
    write_results

__all__ = ["SearchEvaluation", "SearchEvaluator", "evaluate_search", "ResultsFileError",
           "SearchResults", "read_results", "write_results"]
