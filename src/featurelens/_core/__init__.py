"""The private core every subpackage builds on: storage access, names of results and the tool contract.

- :mod:`._storage`: reading embeddings, expression and obs columns, with the checks written once;
- :mod:`._dictionary`: dictionary entries, their activations, models and inputs;
- :mod:`._select`: resolving features and selecting cells;
- :mod:`._keys`: result names from a ``key_added`` stem, their protection and invalidation;
- :mod:`._contract`: ``@tool`` / ``@reader`` / ``@renamed`` (copy, views, MuData, old keywords);
- :mod:`._docs`: shared docstring snippets;
- :mod:`._params`, :mod:`._device`, :mod:`._resources`, :mod:`._tokens`, :mod:`._warn`: small helpers.

``featurelens.tl``, ``pp``, ``get``, ``pl`` and ``microscopy`` read AnnData objects only through
this package; ``featurelens.models`` and ``featurelens.stats`` sit below it and never see AnnData.
"""

from ._contract import reader, renamed, tool
from ._device import resolve_device
from ._dictionary import (
    activations,
    check_input_dim,
    decode_codes,
    dictionary_keys,
    feature_column,
    find_whitening,
    get_entry,
    input_space_directions,
    is_dictionary,
    is_whitening,
    model_from_entry,
    n_features,
    prepared_input,
    preprocess_of,
    reconstruction,
    resolve_input,
)
from ._docs import doc
from ._keys import claim, invalidate, stem
from ._mudata import as_anndata, is_mudata
from ._params import feature_names, plain, plain_params, tool_params, version
from ._resources import data_file
from ._results import DIRECTIONS, TESTS, by_grouping, significant_terms, steering_run, stored
from ._select import cell_positions, feature_names_of, one_feature, resolve_features, select_cells
from ._storage import (
    available,
    available_reps,
    check_adata,
    check_finite,
    embedding,
    embedding_source,
    expression,
    group_codes,
    is_out_of_core,
    looks_log1p,
    lowest_value,
    obs_column,
    raw_embedding,
    resolve_log1p,
)
from ._tokens import TOKENS_KEY, UNS_KEY, alignment, token_info, token_maps
from ._warn import warn

__all__ = [
    "DIRECTIONS",
    "TESTS",
    "TOKENS_KEY",
    "UNS_KEY",
    "activations",
    "alignment",
    "as_anndata",
    "available",
    "available_reps",
    "by_grouping",
    "cell_positions",
    "check_adata",
    "check_finite",
    "check_input_dim",
    "claim",
    "data_file",
    "decode_codes",
    "dictionary_keys",
    "doc",
    "embedding",
    "embedding_source",
    "expression",
    "feature_column",
    "feature_names",
    "feature_names_of",
    "find_whitening",
    "get_entry",
    "group_codes",
    "input_space_directions",
    "invalidate",
    "is_dictionary",
    "is_mudata",
    "is_out_of_core",
    "is_whitening",
    "looks_log1p",
    "lowest_value",
    "model_from_entry",
    "n_features",
    "obs_column",
    "one_feature",
    "plain",
    "plain_params",
    "prepared_input",
    "preprocess_of",
    "raw_embedding",
    "reader",
    "reconstruction",
    "renamed",
    "resolve_device",
    "resolve_features",
    "resolve_input",
    "resolve_log1p",
    "select_cells",
    "significant_terms",
    "steering_run",
    "stem",
    "stored",
    "token_info",
    "token_maps",
    "tool",
    "tool_params",
    "version",
    "warn",
]
