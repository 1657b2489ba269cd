"""cxrguide: chest X-ray classification (Normal / Pneumonia / COVID-19) with lung-guided attention."""

__version__ = "0.1.0"
