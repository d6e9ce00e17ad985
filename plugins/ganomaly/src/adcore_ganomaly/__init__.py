"""GANomaly: semi-supervised anomaly detection via adversarial training (Akcay et al., ACCV 2018).

The detector lives in ``adcore_ganomaly.model``; the package imports nothing, so loading the entry
point (``adcore_ganomaly.plugin``) imports no torch or model code.
"""
