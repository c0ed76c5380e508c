"""Documents and samples: the abstracts profiles are extracted from, and importing them (and labels made elsewhere)."""
