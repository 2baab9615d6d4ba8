"""Model sources: hub ids, local transformers or CTranslate2 directories, built-in weights."""
