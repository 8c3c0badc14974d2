"""The version, in a leaf module: modules that stamp it into artifacts import it from here, not from
the package facade (which imports the API, and so everything)."""
__version__ = "0.1.0"
