"""The README's licence table says what the installed packages' own metadata say."""

from importlib.metadata import metadata

from conftest import ROOT

# package -> (what its metadata's License field says, what the README's row says)
CODE = {"demucs": ("MIT License", "MIT"), "transformers": ("Apache 2.0 License", "Apache-2.0")}


def test_the_licence_table_matches_the_packages_metadata():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Licences"):readme.index("## Built on")]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in table.splitlines() if line.startswith("| ") and "---" not in line}
    for package, (license_field, row) in CODE.items():
        assert metadata(package)["License"] == license_field
        version = metadata(package)["Version"]
        name = next(k for k in rows if f"`{package}` {version}" in k)  # the pinned release
        assert rows[name].startswith(row), (name, rows[name])
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert rows["soloist (this repository)"].startswith("MIT")
