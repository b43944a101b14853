"""Coverage-guided fuzzing of importhooks' parsers with atheris (see fuzz/README.md and docs/fuzzing.rst).

:mod:`fuzz.targets` is the registry of targets; :mod:`fuzz.formats`, :mod:`fuzz.containers`,
:mod:`fuzz.guest` and :mod:`fuzz.server` declare them by family; :mod:`fuzz.harness` holds the
invariants every pipeline-driven target checks; :mod:`fuzz.run` is the libFuzzer entry point and
:mod:`fuzz.make_corpus` writes the seed corpora from the test suite's image builders.
"""
