"""Package layout (metadata lives in pyproject.toml).

``conf/`` stays at the top of the repository, where Hydra users expect it, and is installed as
the package ``tlresearch.conf`` so that ``pip install .`` works from any directory. Listing it
here next to the discovered ``src/`` packages is the one thing pyproject.toml cannot express.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages("src"), "tlresearch.conf"],
    package_dir={"": "src", "tlresearch.conf": "conf"},
    package_data={"tlresearch.conf": ["*.yaml", "**/*.yaml"]},
)
