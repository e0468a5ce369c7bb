"""What the docs site (mkdocs.yml) adds to MkDocs and mkdocstrings.

- MkDocs hooks (``hooks:``): the pages link to source files outside ``docs/``
  (``../examples/quickstart.py``), which is right when they are read on a forge but is
  outside what MkDocs builds. Each such file that exists is copied into the site under
  ``source/`` and the link points there, so it works on the site too. A link to a file that
  does not exist is left alone, and ``mkdocs build --strict`` fails on it like on any other
  broken link.
- A Griffe extension (``SphinxRoles``, in mkdocstrings' ``extensions``): the docstrings
  refer to other objects with Sphinx roles (a ``:meth:`` role around ``refresh``), which
  mkdocstrings would print as they are. They become cross-references to the object's entry
  in the generated reference; one to a name of the package that does not exist fails the
  strict build.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

import griffe
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

MOUNT = "source"
# An inline Markdown link or image target: ](target) or ](target "title").
_LINK = re.compile(r"\]\((?P<target>[^)\s]+)(?P<rest>[^)]*)\)")
# A Sphinx cross-reference role: :meth:`name`, :class:`~package.module.Name`, :py:func:`f`.
_ROLE = re.compile(r":(?:py:)?(?:meth|func|class|attr|exc|data|mod|obj):`(?P<tilde>~)?(?P<target>[\w.]+)`")


def _repo_root(config: MkDocsConfig) -> Path:
    return Path(config.config_file_path).resolve().parent


def _outside_target(config: MkDocsConfig, src_uri: str, target: str) -> str | None:
    """The repository file a link of page ``src_uri`` points to, if it leaves docs_dir."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("/", "#")):
        return None
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path:
        return None
    in_docs = posixpath.normpath(posixpath.join(posixpath.dirname(src_uri), path))
    if not in_docs.startswith("../"):
        return None
    absolute = (Path(config.docs_dir).resolve() / in_docs).resolve()
    try:
        relative = absolute.relative_to(_repo_root(config))
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
                source = str(_repo_root(config) / relative)
                files.append(File.generated(config, f"{MOUNT}/{relative}", abs_src_path=source))
    return files


def on_page_markdown(markdown: str, *, page: Page, config: MkDocsConfig, files: Files) -> str:
    def rewrite(match: re.Match[str]) -> str:
        target = match["target"]
        relative = _outside_target(config, page.file.src_uri, target)
        if relative is None:
            return match.group(0)
        fragment = "#" + target.split("#", 1)[1] if "#" in target else ""
        new = posixpath.relpath(f"{MOUNT}/{relative}", posixpath.dirname(page.file.src_uri) or ".")
        return f"]({new}{fragment}{match['rest']})"

    return _LINK.sub(rewrite, markdown)


class SphinxRoles(griffe.Extension):
    """Sphinx cross-reference roles in docstrings, as mkdocstrings cross-references."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is not None and ":`" in obj.docstring.value:
            obj.docstring.value = _ROLE.sub(lambda m: _reference(obj, loader, m), obj.docstring.value)


def _reference(obj: griffe.Object, loader: griffe.GriffeLoader, match: re.Match[str]) -> str:
    target = match["target"]
    shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
    if target.startswith("."):
        return f"`{shown}`"  # relative to a private module: not in the reference
    # Looked up as Sphinx does: in the object (a class or module), its parents, then as is.
    scopes: list[str] = []
    scope: griffe.Object | None = obj
    while scope is not None:
        if scope.is_class or scope.is_module:
            scopes.append(f"{scope.path}.{target}")
        scope = scope.parent
    for candidate in (*scopes, target):
        try:
            found = loader.modules_collection[candidate]
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        return f"[`{shown}`][{found.path}]"
    if "." in target and target.split(".", 1)[0] not in loader.modules_collection:
        return f"`{shown}`"  # another library's (datetime.timedelta): shown as code
    # A name of ours that does not resolve: a reference that the strict build reports.
    return f"[`{shown}`][{scopes[0] if scopes else target}]"
