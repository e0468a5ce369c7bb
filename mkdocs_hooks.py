"""MkDocs hooks (``hooks:`` in mkdocs.yml): links from docs/ to files of the repository.

The pages link to source files outside ``docs/`` (``../examples/quickstart.py``), which is
right when they are read on a forge but is outside what MkDocs builds. This hook copies
each such file that exists into the site under ``source/`` and points the link there, so
the link works on the site too. A link to a file that does not exist is left alone, and
``mkdocs build --strict`` fails on it like on any other broken link.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

MOUNT = "source"
# An inline Markdown link or image target: ](target) or ](target "title").
_LINK = re.compile(r"\]\((?P<target><[^>]*>|[^)\s]+)(?P<rest>[^)]*)\)")


def _repo_root(config: MkDocsConfig) -> Path:
    return Path(config.config_file_path).resolve().parent


def _outside_target(config: MkDocsConfig, src_uri: str, target: str) -> str | None:
    """The repository path a link of page ``src_uri`` points to, if it leaves docs_dir."""
    if target.startswith("<") and target.endswith(">"):
        target = target[1:-1]
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("/", "#")):
        return None
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path:
        return None
    in_docs = posixpath.normpath(posixpath.join(posixpath.dirname(src_uri), path))
    if not in_docs.startswith("../"):
        return None
    docs_dir = Path(config.docs_dir).resolve()
    root = _repo_root(config)
    absolute = (docs_dir / in_docs).resolve()
    try:
        relative = absolute.relative_to(root)
    except ValueError:
        return None  # outside the repository: left for the link check to report
    if not absolute.is_file():
        return None  # a broken link: left for the link check to report
    return relative.as_posix()


def on_files(files: Files, *, config: MkDocsConfig) -> Files:
    mounted: set[str] = set()
    for file in files.documentation_pages():
        text = Path(file.abs_src_path or "").read_text(encoding="utf-8")
        for match in _LINK.finditer(text):
            relative = _outside_target(config, file.src_uri, match["target"])
            if relative is not None and relative not in mounted:
                mounted.add(relative)
                files.append(
                    File.generated(
                        config, f"{MOUNT}/{relative}", abs_src_path=str(_repo_root(config) / relative)
                    )
                )
    return files


def on_page_markdown(markdown: str, *, page: Page, config: MkDocsConfig, files: Files) -> str:
    def rewrite(match: re.Match[str]) -> str:
        target = match["target"]
        relative = _outside_target(config, page.file.src_uri, target)
        if relative is None:
            return match.group(0)
        fragment = "#" + target.split("#", 1)[1] if "#" in target else ""
        new = posixpath.relpath(f"{MOUNT}/{relative}", posixpath.dirname(page.file.src_uri) or ".")
        return f"]({new}{fragment.rstrip('>')}{match['rest']})"

    return _LINK.sub(rewrite, markdown)
