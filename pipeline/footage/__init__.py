"""Person search in a user's own footage: the gallery store (:mod:`.store`), indexing footage into
it (:mod:`.indexing`), ranking and search (:mod:`.ranking`, :mod:`.search`), the results page
(:mod:`.report`, :mod:`.pictures`), scoring against synthetic truth (:mod:`.scoring`) and the
local app (:mod:`.app`). Store, ranking, search and pages run no network."""
