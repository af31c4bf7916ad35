"""Packages are found, not listed: every folder of the zbatch tree, plus the three folders that
pyproject.toml maps to import names (wrappers/, templates/, site-configs/)."""

from setuptools import find_packages, setup

MAPPED = ["zbatch_wrappers", "zbatch_templates", "zbatch_site_configs"]

setup(packages=find_packages(include=["zbatch", "zbatch.*"]) + MAPPED)
