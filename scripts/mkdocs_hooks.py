"""MkDocs hook (mkdocs.yml `hooks:`): the configuration and command-line references, generated from the code at
every build and never written into docs/, so that they cannot fall behind it; the front page, which is the README
(its links to docs/ pages made site links); the README's "Which rule?" section, shown where a page says
`<!-- which-rule -->`, so that its words live in one place; and a report's links to run folders (which are files,
not pages) pointed at those folders in the repository."""

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

from semcon.reference import cli_reference, config_reference


README = Path(__file__).resolve().parents[1] / "README.md"
LINK = re.compile(r"\]\((?!https?:|#|mailto:)([^)\s]+)\)")


def relinked(readme_text: str, repo_url: str) -> str:
    """README text for a page at the site's root: a link into docs/ becomes a link to that page, any other link a
    link to the file in the repository."""
    def relink(match: re.Match) -> str:
        target = match.group(1)
        if target.startswith("docs/"):
            return f"]({target.removeprefix('docs/')})"
        return f"]({repo_url.rstrip('/')}/blob/main/{target})"

    return LINK.sub(relink, readme_text)


def front_page(repo_url: str) -> str:
    """The README as the site's front page."""
    return relinked(README.read_text(encoding="utf-8"), repo_url)


def on_files(files, config):
    for path, text in (("reference/config.md", config_reference()), ("reference/cli.md", cli_reference()),
                       ("index.md", front_page(config["repo_url"]))):
        if (old := files.get_file_from_path(path)) is not None:
            files.remove(old)
        files.append(File.generated(config, path, content=text))
    return files


WHICH_RULE = "<!-- which-rule -->"


def which_rule(repo_url: str) -> str:
    """The README's "Which rule?" section, without its heading and its comment, for a page at the site's root."""
    section = README.read_text(encoding="utf-8").split("## Which rule?\n", 1)[1].split("\n## ", 1)[0]
    return relinked(re.sub(r"<!--.*?-->\n", "", section).strip(), repo_url)


FOLDER_LINK = re.compile(r"\]\((?!https?:|#)([^)\s]+/)\)")  # ](local/seed-0/): a folder, not a page


def on_page_markdown(markdown, page, config, files):
    markdown = markdown.replace(WHICH_RULE, which_rule(config['repo_url'])) if WHICH_RULE in markdown else markdown
    here = Path(page.file.src_uri).parent

    def in_repository(match: re.Match) -> str:
        return f"]({config['repo_url'].rstrip('/')}/tree/main/{posixpath.normpath(f'docs/{here.as_posix()}/{match.group(1)}')}/)"

    return FOLDER_LINK.sub(in_repository, markdown)

