"""MkDocs hook (mkdocs.yml `hooks:`): the configuration and command-line references, generated from the code at
every build and never written into docs/, so that they cannot fall behind it; the README's "Which rule?" section,
shown where a page says `<!-- which-rule -->`, so that its words live in one place; and a report's links to run
folders (which are files, not pages) pointed at those folders in the repository."""

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

from semcon.reference import cli_reference, config_reference


def on_files(files, config):
    for path, text in (("reference/config.md", config_reference()), ("reference/cli.md", cli_reference())):
        files.append(File.generated(config, path, content=text))
    return files


WHICH_RULE = "<!-- which-rule -->"


def which_rule() -> str:
    """The README's "Which rule?" section, without its heading and its comment."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Which rule?\n", 1)[1].split("\n## ", 1)[0]
    return re.sub(r"<!--.*?-->\n", "", section).strip()


FOLDER_LINK = re.compile(r"\]\((?!https?:|#)([^)\s]+/)\)")  # ](local/seed-0/): a folder, not a page


def on_page_markdown(markdown, page, config, files):
    markdown = markdown.replace(WHICH_RULE, which_rule()) if WHICH_RULE in markdown else markdown
    here = Path(page.file.src_uri).parent

    def in_repository(match: re.Match) -> str:
        return f"]({config['repo_url'].rstrip('/')}/tree/main/{posixpath.normpath(f'docs/{here.as_posix()}/{match.group(1)}')}/)"

    return FOLDER_LINK.sub(in_repository, markdown)

