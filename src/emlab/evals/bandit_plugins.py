"""emlab's own Bandit plugins for vulnerability families Bandit does not see.

Registered through the `bandit.plugins` entry point (see pyproject.toml), so a plain
`bandit -r DIR` run picks them up. Each check is an intra-function taint analysis over
the AST: values read from `request.*` (Flask), `input()` or `sys.argv` are tainted, taint
flows through assignments, string formatting and concatenation, and sanitisers
(`escape`, `secure_filename`, `basename`, `int`, `quote`, ...) clear it.

    B901  reflected XSS: tainted data in a Flask response or render_template_string  CWE-79
    B902  jinja2.Template(..., autoescape=False)                                     CWE-79
    B903  path traversal: tainted path reaches open/send_file/os.remove/...          CWE-22
    B904  zipfile extractall without member checks                                   CWE-22
    B905  open redirect: redirect() to a tainted URL without a host check            CWE-601
    B906  SSRF: requests/urlopen on a tainted URL without an allow-list check        CWE-918
    B907  hard-coded credential assigned to a password/secret/token name             CWE-798
"""

from __future__ import annotations

import ast
import re

import bandit
from bandit.core import test_properties as test

SANITISERS = {"escape", "secure_filename", "basename", "int", "float", "bool", "quote", "quote_plus", "clean",
              "urlencode", "len", "abs", "round", "jsonify", "dumps", "sanitize", "sanitise", "bleach",
              "literal_eval", "abspath_checked", "uuid4", "hash", "sha256", "hexdigest", "isdigit", "isalnum"}
SOURCE_ATTRS = {"args", "form", "values", "cookies", "headers", "files", "json", "data", "get_json", "view_args"}
PATH_SINKS = {"open", "send_file", "remove", "unlink", "rmtree", "copy", "copyfile", "move", "rename", "listdir",
              "makedirs", "mkdir", "chmod", "extract", "Path", "read_text", "write_text", "read_bytes"}
HTTP_SINKS = {"get", "post", "put", "delete", "head", "request", "urlopen", "Request"}
SECRET_WORDS = ("password", "passwd", "pwd", "secret", "api_key", "apikey", "token", "private_key", "access_key")


def _issue(severity, text: str, cwe: int):
    return bandit.Issue(severity=severity, confidence=bandit.MEDIUM, text=text, cwe=cwe)


def _call_name(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def _is_source(node: ast.AST) -> bool:
    """request.args[...] / request.form.get(...) / input() / sys.argv / request.get_json()."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "request" \
                and sub.attr in SOURCE_ATTRS:
            return True
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "input":
            return True
        if isinstance(sub, ast.Attribute) and sub.attr == "argv" and isinstance(sub.value, ast.Name) \
                and sub.value.id == "sys":
            return True
    return False


class Taint:
    """Names carrying user-controlled data within one function (a few fix-point passes)."""

    def __init__(self, func: ast.AST, extra_sanitisers: frozenset = frozenset()):
        self.func = func
        self.sanitisers = SANITISERS | extra_sanitisers
        self.names: set[str] = set()
        # Flask view arguments (/<path:name>) are user-controlled too.
        if self.is_route(func):
            self.names.update(a.arg for a in func.args.args)
        for _ in range(4):
            before = len(self.names)
            for node in ast.walk(func):
                targets, value = [], None
                if isinstance(node, ast.Assign):
                    targets, value = node.targets, node.value
                elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and node.value is not None:
                    targets, value = [node.target], node.value
                elif isinstance(node, ast.For):
                    targets, value = [node.target], node.iter
                elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                    targets, value = [node.optional_vars], node.context_expr
                if value is None:
                    continue
                tainted = self.expr(value)
                for t in targets:
                    for name in ast.walk(t):
                        if isinstance(name, ast.Name):
                            if tainted:
                                self.names.add(name.id)
                            elif isinstance(node, ast.Assign) and self.sanitised(value):
                                self.names.discard(name.id)
            if len(self.names) == before:
                break

    @staticmethod
    def is_route(func: ast.AST) -> bool:
        return any(_call_name(d) in ("route", "get", "post", "put", "delete", "patch")
                   for d in getattr(func, "decorator_list", []))

    def sanitised(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Call) and _call_name(node) in self.sanitisers

    def expr(self, node: ast.AST | None) -> bool:
        """Whether an expression carries taint (sanitiser calls stop it)."""
        if node is None:
            return False
        if self.sanitised(node):
            return False
        if _is_source(node):
            # A source nested inside a sanitiser is handled by the recursion below.
            if not any(self.sanitised(s) and _is_source(s) for s in ast.walk(node)):
                return True
        if isinstance(node, ast.Name):
            return node.id in self.names
        if isinstance(node, ast.Call):
            return any(self.expr(a) for a in node.args) or any(self.expr(k.value) for k in node.keywords) or \
                (isinstance(node.func, ast.Attribute) and self.expr(node.func.value))
        return any(self.expr(child) for child in ast.iter_child_nodes(node)
                   if isinstance(child, ast.expr))


def _file_text(context) -> str:
    try:
        with open(context.filename, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def _functions_text(func: ast.AST) -> str:
    try:
        return ast.unparse(func)
    except Exception:  # noqa: BLE001 - unparse of odd trees
        return ""


@test.checks("FunctionDef")
@test.test_id("B901")
def flask_reflected_xss(context):
    func = context.node
    if not Taint.is_route(func):
        return None
    source = _file_text(context)
    # Templates created with autoescaping escape what they render.
    autoescaped = "autoescape=True" in source or "select_autoescape" in source
    taint = Taint(func, frozenset({"render"}) if autoescaped else frozenset())
    for node in ast.walk(func):
        if isinstance(node, ast.Return) and node.value is not None:
            value = node.value
            if isinstance(value, (ast.Dict, ast.List)):
                continue  # Flask serialises these as JSON
            if isinstance(value, ast.Call) and _call_name(value) in ("jsonify", "render_template", "redirect",
                                                                      "send_file", "send_from_directory", "abort"):
                continue
            if autoescaped and isinstance(value, ast.Call) and _call_name(value) == "render":
                continue
            if isinstance(value, ast.Tuple) and value.elts:
                value = value.elts[0]
            if taint.expr(value):
                return _issue(bandit.MEDIUM, "User input is returned in an HTML response without escaping.",
                              79)
        if isinstance(node, ast.Call) and _call_name(node) in ("render_template_string", "make_response", "Markup") \
                and node.args and taint.expr(node.args[0]):
            return _issue(bandit.MEDIUM, f"User input reaches {_call_name(node)} without escaping.",
                          79)
    return None


@test.checks("Call")
@test.test_id("B902")
def jinja2_template_autoescape_false(context):
    node = context.node
    if _call_name(node) != "Template":
        return None
    for kw in node.keywords:
        if kw.arg == "autoescape" and isinstance(kw.value, ast.Constant) and kw.value.value is False:
            return _issue(bandit.HIGH, "jinja2.Template with autoescape=False renders unescaped input.",
                          79)
    return None


PATH_GUARDS = ("realpath", "abspath", "normpath", "secure_filename", "basename", "startswith", "is_relative_to",
               "commonpath", "resolve()", "'..' in", '".." in')
REDIRECT_GUARDS = ("urlparse", "url_has_allowed_host", "netloc", "startswith('/')", 'startswith("/")', "ALLOWED",
                   "allowed", "url_for(")
SSRF_GUARDS = ("ALLOWED", "allowed", "whitelist", "allowlist", "hostname in", "netloc in")


def _guarded(func: ast.AST, guards: tuple[str, ...]) -> bool:
    """Whether the function's source mentions any of these checks (then it is not flagged)."""
    text = _functions_text(func)
    return any(g in text for g in guards)


def _tainted_calls(func: ast.AST, taint: "Taint", sinks) -> list[ast.Call]:
    """Calls to `sinks` (names) whose first argument carries user input."""
    return [node for node in ast.walk(func)
            if isinstance(node, ast.Call) and _call_name(node) in sinks and node.args and taint.expr(node.args[0])]


@test.checks("FunctionDef")
@test.test_id("B903")
def tainted_path(context):
    func = context.node
    taint = Taint(func)
    if not taint.names and not any(_is_source(n) for n in ast.walk(func)):
        return None
    if _guarded(func, PATH_GUARDS):
        return None
    calls = _tainted_calls(func, taint, PATH_SINKS)
    if calls:
        return _issue(bandit.MEDIUM, f"User-controlled path reaches {_call_name(calls[0])}() unchecked.", 22)
    return None


@test.checks("Call")
@test.test_id("B904")
def zip_extractall(context):
    node = context.node
    if _call_name(node) != "extractall":
        return None
    target = node.func.value if isinstance(node.func, ast.Attribute) else None
    text = ast.unparse(target) if target is not None else ""
    # Names bound to a ZipFile anywhere in the file (assignment or `with ... as name`).
    zip_names = set(re.findall(r"(\w+)\s*=\s*(?:zipfile\.)?ZipFile\(", _file_text(context)))
    zip_names |= set(re.findall(r"ZipFile\([^\n]*\)\s+as\s+(\w+)", _file_text(context)))
    is_zip = "zip" in text.lower() or text in zip_names or "ZipFile(" in text
    if is_zip and not any(k.arg == "members" for k in node.keywords) and len(node.args) < 2:
        return _issue(bandit.MEDIUM, "zipfile extractall without validating member paths.",
                      22)
    return None


@test.checks("FunctionDef")
@test.test_id("B905")
def open_redirect(context):
    func = context.node
    if _guarded(func, REDIRECT_GUARDS):
        return None
    if _tainted_calls(func, Taint(func), {"redirect"}):
        return _issue(bandit.MEDIUM, "Redirect to a user-supplied URL without a host check.", 601)
    return None


@test.checks("FunctionDef")
@test.test_id("B906")
def ssrf(context):
    func = context.node
    if _guarded(func, SSRF_GUARDS):
        return None
    for node in _tainted_calls(func, Taint(func), HTTP_SINKS):
        owner = ast.unparse(node.func.value) if isinstance(node.func, ast.Attribute) else ""
        if owner in ("requests", "session", "urllib.request", "httpx", "client") or _call_name(node) in (
                "urlopen", "Request"):
            return _issue(bandit.MEDIUM, "Server-side request to a user-supplied URL.", 918)
    return None


@test.checks("Assign")
@test.test_id("B907")
def hardcoded_credential(context):
    node = context.node
    value = node.value
    if not (isinstance(value, ast.Constant) and isinstance(value.value, str) and len(value.value) >= 6):
        return None
    if any(c in value.value for c in " {}<>/") or value.value.isupper():
        return None  # sentences, templates, paths and CONSTANT_NAMES are not secrets
    for target in node.targets:
        name = target.id if isinstance(target, ast.Name) else (target.attr if isinstance(target, ast.Attribute) else "")
        if any(w in name.lower() for w in SECRET_WORDS):
            return _issue(bandit.MEDIUM, f"Hard-coded credential assigned to '{name}'.", 798)
    return None
