"""Datasets: readers for PRW and CUHK-SYSU, the synthetic world, transforms."""
