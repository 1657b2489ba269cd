"""cxrguide: chest X-ray classifiers (Normal / Pneumonia / COVID-19) with lung-guided attention."""

__version__ = "0.1.0"
