"""Build script. All metadata lives in pyproject.toml; this file exists for the
optional compiled extensions, which later build steps add here."""
from setuptools import setup

setup()
