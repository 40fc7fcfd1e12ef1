"""cvgtext: cross-view geo-localization from natural-language descriptions."""

__version__ = "0.1.0"
