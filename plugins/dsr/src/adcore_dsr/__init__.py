"""DSR (Zavrtanik et al., ECCV 2022) for adcore; the package imports nothing (see adcore_dsr.model)."""
