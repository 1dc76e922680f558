"""MkDocs hook (mkdocs.yml `hooks:`): the configuration and command-line references, generated from the code at
every build and never written into docs/, so that they cannot fall behind it."""

from mkdocs.structure.files import File

from semcon.reference import cli_reference, config_reference


def on_files(files, config):
    for path, text in (("reference/config.md", config_reference()), ("reference/cli.md", cli_reference())):
        files.append(File.generated(config, path, content=text))
    return files
