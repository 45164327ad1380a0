"""Meta sets made from other files: LaCLIP's own four example sets, read from its rewrite/utils.py (parsed,
never run), and caption groups drawn from a COCO captions annotation file.

People typed these strings: whitespace is normalised (stripped, runs collapsed to one space) because the
prompt format allows no edge space, tab or line break. Each set is written with a provenance line:
  made_by, version   the command and rewrite's version that wrote it
  from               {"path": absolute path, "sha256": of the bytes read} (+ "variables" for LaCLIP)
  when               UTC time, ISO 8601
  counts             what the set holds (and, for COCO, what the file held and how many images were eligible)
  normalised         {"whitespace": strings changed by the normalising, ...}: what was changed or dropped
and for COCO also seed, captions_per_group, image_ids (the images chosen) and skipped (captions left out).
"""
from __future__ import annotations

import ast
import hashlib
import json
import random
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__, meta, storage
from .sets import MetaSetError

# The variables of LaCLIP's rewrite/utils.py: a pair set is two parallel lists of strings, coco a list of groups.
LACLIP_PAIRS = {
    "chatgpt": ("chatgpt_source_caption_list", "chatgpt_target_caption_list"),
    "bard": ("bard_source_caption_list", "bard_target_caption_list"),
    "human": ("human_source_caption_list", "human_target_caption_list"),
}
LACLIP_GROUPS = {"coco": "coco_caption_list"}


def read_laclip_sets(utils_py: Path) -> dict[str, list]:
    """LaCLIP's sets as {"chatgpt"|"bard"|"human": [(source, target), ...], "coco": [[caption, ...], ...]},
    strings as they stand in the file. Only the literal values of those module-level assignments are
    evaluated (ast.literal_eval): the file is never imported or run, so nothing in it executes."""
    utils_py = Path(utils_py)
    return _parse_laclip(utils_py, _read(utils_py, "LaCLIP's rewrite/utils.py"))


def import_laclip(utils_py: Path, out_dir: Path, overwrite: bool = False) -> dict[str, Path]:
    """Write OUT_DIR/chatgpt.jsonl, bard.jsonl, human.jsonl (pairs) and coco.jsonl (groups) from LaCLIP's
    rewrite/utils.py, for `rewrite run --meta-dir OUT_DIR`. All four sets and all four targets
    (meta.check_target: an existing one only with `overwrite`, and only when this tool wrote it) are
    checked before any is written; nothing else in OUT_DIR is touched."""
    utils_py, out_dir = Path(utils_py).resolve(), Path(out_dir)
    if storage.exists(out_dir) and not storage.is_dir(out_dir):
        raise MetaSetError(f"{out_dir}: exists and is not a folder; the four sets are written into a folder")
    targets = {name: meta.check_target(out_dir / f"{name}.jsonl", overwrite) for name in (*LACLIP_PAIRS, *LACLIP_GROUPS)}
    data = _read(utils_py, "LaCLIP's rewrite/utils.py")
    sets = _parse_laclip(utils_py, data)
    origin = {"path": str(utils_py), "sha256": hashlib.sha256(data).hexdigest()}
    made = {"made_by": meta.IMPORT_LACLIP, "version": __version__, "when": _now()}
    planned: dict[str, tuple[dict, dict]] = {}
    for name, variables in LACLIP_PAIRS.items():
        pairs = tuple((_tidy(s), _tidy(t)) for s, t in sets[name])
        changed = sum(raw != tidy for raws, tidies in zip(sets[name], pairs) for raw, tidy in zip(raws, tidies))
        planned[name] = ({"pairs": pairs}, {
            **made, "from": {**origin, "variables": list(variables)},
            "counts": {"pairs": len(pairs)}, "normalised": {"whitespace": changed}})
    for name, variable in LACLIP_GROUPS.items():
        groups, changed, dropped = [], 0, 0
        for group in sets[name]:
            changed += sum(_tidy(c) != c for c in group)
            kept = tuple(dict.fromkeys(_tidy(c) for c in group))  # distinct, in their order
            dropped += len(group) - len(kept)
            groups.append(kept)
        planned[name] = ({"groups": tuple(groups)}, {
            **made, "from": {**origin, "variables": [variable]},
            "counts": {"groups": len(groups), "captions": sum(map(len, groups))},
            "normalised": {"whitespace": changed, "duplicate_captions_dropped": dropped}})
    for name, (content, provenance) in planned.items():
        found = meta.problems(meta.MetaSet(name=name, path=targets[name], **content), num_examples=1)  # as meta.write
        if found:
            raise MetaSetError(f"{utils_py}: LaCLIP's {name} set ({', '.join(provenance['from']['variables'])}) is "
                               f"not usable in a prompt even with its whitespace normalised: "
                               f"{meta.describe_problems(found)}; nothing written")
    return {name: meta.write(targets[name], provenance=provenance, **content).path
            for name, (content, provenance) in planned.items()}


def import_coco(annotations_json: Path, out: Path, groups: int = 16, seed: int = 0,
                captions_per_group: int = 5, overwrite: bool = False) -> Path:
    """Write a group set of `groups` COCO images, each with its first `captions_per_group` distinct captions
    in annotation-id order. The images are drawn with random.Random(seed) from the eligible ones sorted by
    id, so the set depends only on the file and the seed; the groups are written in image-id order.

    A line break or tab inside a caption is a typing slip and is normalised to a space like any other
    whitespace; a caption holding '=>' (the prompt's own separator) is skipped rather than altered, as is one
    left empty and one repeating a caption kept before. An image is eligible with at least
    `captions_per_group` captions left. An existing `out` is replaced only with `overwrite`, and only
    when this tool wrote it (meta.check_target)."""
    if groups < 1:
        raise MetaSetError(f"groups must be at least 1, got {groups}")
    if captions_per_group < 2:
        raise MetaSetError(f"captions_per_group must be at least 2 (an example is two captions of one group), "
                           f"got {captions_per_group}")
    path, out = Path(annotations_json).resolve(), meta.check_target(out, overwrite)
    data = _read(path, "a COCO captions annotation file such as captions_train2017.json")
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as e:
        raise MetaSetError(f"{path}: not JSON ({e.msg} at line {e.lineno} column {e.colno}); expected a COCO "
                           "captions annotation file") from None
    except UnicodeDecodeError:
        raise MetaSetError(f"{path}: not JSON (not UTF-8 text); expected a COCO captions annotation file") from None
    except RecursionError:
        raise MetaSetError(f"{path}: JSON nested too deeply to be a COCO captions annotation file") from None
    if not isinstance(doc, dict):
        raise MetaSetError(f"{path}: the top level is a JSON {type(doc).__name__}, not an object with "
                           "'images' and 'annotations' (a COCO captions annotation file)")
    images = _field(doc, "images", list, path, "the top level")
    annotations = _field(doc, "annotations", list, path, "the top level")
    image_ids = {_field(image, "id", int, path, f"images[{i}]") for i, image in enumerate(images)}
    by_image: dict[int, list[tuple[int, str]]] = {}
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        image_id = _field(ann, "image_id", int, path, where)
        if image_id not in image_ids:
            raise MetaSetError(f"{path}: {where} has image_id {image_id}, which no entry of 'images' has")
        by_image.setdefault(image_id, []).append((_field(ann, "id", int, path, where),
                                                  _field(ann, "caption", str, path, where)))
    skipped = {"with_arrow": 0, "empty": 0, "duplicate": 0}
    usable: dict[int, list[tuple[str, bool]]] = {}  # image id -> (caption, whether normalising changed it)
    for image_id, anns in by_image.items():
        kept: dict[str, bool] = {}
        for _, caption in sorted(anns, key=lambda a: a[0]):
            tidy = _tidy(caption)
            reason = "with_arrow" if "=>" in tidy else "empty" if not tidy else "duplicate" if tidy in kept else None
            if reason:
                skipped[reason] += 1
            else:
                kept[tidy] = tidy != caption
        usable[image_id] = list(kept.items())
    eligible = sorted(i for i, kept in usable.items() if len(kept) >= captions_per_group)
    if len(eligible) < groups:
        raise MetaSetError(f"{path}: {len(eligible)} eligible image(s) (with at least {captions_per_group} distinct "
                           f"usable captions), fewer than the {groups} groups asked for")
    chosen = sorted(random.Random(seed).sample(eligible, groups))
    taken = [usable[i][:captions_per_group] for i in chosen]
    provenance = {
        "made_by": meta.IMPORT_COCO, "version": __version__, "when": _now(),
        "from": {"path": str(path), "sha256": hashlib.sha256(data).hexdigest()},
        "seed": seed, "captions_per_group": captions_per_group, "image_ids": chosen,
        "counts": {"images": len(images), "annotations": len(annotations), "eligible_images": len(eligible),
                   "groups": groups, "captions": groups * captions_per_group},
        "normalised": {"whitespace": sum(changed for group in taken for _, changed in group)},
        "skipped": skipped,
    }
    return meta.write(out, groups=[[c for c, _ in group] for group in taken], provenance=provenance).path


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tidy(text: str) -> str:
    """One space between words, none at the ends (line breaks and tabs included)."""
    return " ".join(text.split())


def _read(path: Path, what: str) -> bytes:
    if not storage.exists(path):
        raise MetaSetError(f"{path}: no such file (expected {what})")
    if not storage.is_file(path):
        raise MetaSetError(f"{path}: not a file (expected {what})")
    return storage.read_bytes(path)


_JSON_TYPE = {int: "integer", str: "string", list: "array"}


def _field(obj, key: str, kind: type, path: Path, where: str):
    """obj[key] checked to be a `kind` (an int is never a bool), else an error naming the file, entry and key."""
    if not isinstance(obj, dict):
        raise MetaSetError(f"{path}: {where} is a JSON {type(obj).__name__}, not an object")
    if key not in obj:
        raise MetaSetError(f"{path}: {where} has no key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MetaSetError(f"{path}: {where}[{key!r}] is {value!r:.60}, not a JSON {_JSON_TYPE[kind]}")
    return value


def _parse_laclip(path: Path, data: bytes) -> dict[str, list]:
    try:
        tree = ast.parse(data, filename=str(path))
    except SyntaxError as e:  # a binary file's null bytes, or its declared encoding, have no line (None, 0)
        where = f"{path}:{e.lineno}" if e.lineno else str(path)
        raise MetaSetError(f"{where}: not Python ({e.msg}); expected LaCLIP's rewrite/utils.py") from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise MetaSetError(f"{path}: not Python ({str(e) or type(e).__name__}); expected LaCLIP's rewrite/utils.py") from None
    wanted = [v for pair in LACLIP_PAIRS.values() for v in pair] + list(LACLIP_GROUPS.values())
    found = _literal_assignments(path, tree, wanted)
    sets: dict[str, list] = {}
    for name, (source_var, target_var) in LACLIP_PAIRS.items():
        sources, targets = (_strings(path, var, *found[var]) for var in (source_var, target_var))
        if len(sources) != len(targets):
            raise MetaSetError(f"{path}: {source_var} (line {found[source_var][0].lineno}) holds {len(sources)} "
                               f"strings but {target_var} (line {found[target_var][0].lineno}) holds "
                               f"{len(targets)}; a pair set needs one target per source")
        sets[name] = list(zip(sources, targets))
    for name, var in LACLIP_GROUPS.items():
        node, value = found[var]
        if not isinstance(value, list):
            raise MetaSetError(f"{path}:{node.lineno}: {var} is a {type(value).__name__}, not a list of lists of strings")
        sets[name] = [_strings(path, f"{var}[{i}]", _item(node, i), group) for i, group in enumerate(value)]
    return sets


def _literal_assignments(path: Path, tree: ast.Module, names: list[str]) -> dict[str, tuple[ast.AST, object]]:
    """name -> (the value's node, its literal value) for module-level `name = <literal>`; a name bound
    more than once at module level is refused, since which binding wins would depend on running the file."""
    bound: dict[str, list[ast.stmt]] = {name: [] for name in names}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            targets = stmt.targets
        elif isinstance(stmt, ast.AugAssign) or isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets = [stmt.target]
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id in bound:
                bound[target.id].append(stmt)
    out = {}
    for name, stmts in bound.items():
        if not stmts:
            raise MetaSetError(f"{path}: no module-level assignment `{name} = [...]` (is it LaCLIP's rewrite/utils.py?)")
        if len(stmts) > 1 or isinstance(stmts[0], ast.AugAssign):
            lines = ", ".join(str(s.lineno) for s in stmts)
            raise MetaSetError(f"{path}:{stmts[-1].lineno}: {name} is bound at lines {lines}; only a single "
                               f"`{name} = [...]` is read")
        node = stmts[0].value
        try:
            out[name] = (node, ast.literal_eval(node))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise MetaSetError(f"{path}:{node.lineno}: {name} is not a literal (the file is read, never run, so "
                               "the list must be written out as plain strings)") from None
    return out


def _item(node: ast.AST, i: int) -> ast.AST:
    """The node of a literal list's i-th item, for its line number."""
    return node.elts[i] if isinstance(node, (ast.List, ast.Tuple)) else node


def _strings(path: Path, name: str, node: ast.AST, value: object) -> list[str]:
    if not isinstance(value, list):
        raise MetaSetError(f"{path}:{node.lineno}: {name} is a {type(value).__name__}, not a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise MetaSetError(f"{path}:{_item(node, i).lineno}: {name}[{i}] is a {type(item).__name__}, not a string")
    return value
