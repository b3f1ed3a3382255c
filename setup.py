"""Build hook: the MONAI bundle (``bundle/``: configs, weights, docs, schema, license) travels inside the wheel as
``medxgan_monai/bundle_data``, so an installed package has its bundle (``medxgan_monai.bundle.DEFAULT_BUNDLE``).
Everything else about the build is in ``pyproject.toml``."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLE = Path(__file__).resolve().parent / "bundle"
#: what a bundle folder holds (the model zoo's layout)
BUNDLE_PARTS = ("configs", "models", "docs", "schema", "LICENSE")


class BuildWithBundle(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "medxgan_monai" / "bundle_data"
        shutil.rmtree(target, ignore_errors=True)  # the build folder persists: no file of an earlier build stays
        for part in BUNDLE_PARTS:
            source = BUNDLE / part
            if source.is_dir():
                shutil.copytree(source, target / part, dirs_exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / part)


setup(cmdclass={"build_py": BuildWithBundle})
