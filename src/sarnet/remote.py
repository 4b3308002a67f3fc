"""Reading the DVC remote back after a push (docs/reliability.md "Pushes").

`dvc push` and `dvc status -c` take a folder's `.dir` manifest on the remote as proof that the whole
folder is there (treeverse/dvc#10977): a killed push can leave the manifest with a fraction of its
files, and every later push then says done while `dvc pull` elsewhere fails. So the remote itself is
read, object by object, through DVC's own object database (any remote type DVC can push to). Used by
the CLI only (`sarnet repro`, `sarnet verify-remote`), never by a stage.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from sarnet.core.errors import SarnetError

@dataclasses.dataclass
class RemoteCheck:
    remote: str  # the remote's name
    needed: int = 0  # objects the cached outputs of dvc.lock need: files, folder manifests, their files
    missing: list[str] = dataclasses.field(default_factory=list)  # of those, what the remote lacks (md5; `.dir` for manifests)
    incomplete: list[str] = dataclasses.field(default_factory=list)  # manifests on the remote whose folder is not all there
    unlisted: list[str] = dataclasses.field(default_factory=list)  # manifests neither the cache nor the remote holds: files unknown


def _open_remote(root: str, remote: str | None) -> tuple[Any, str, dict[str, Any]]:
    """The repository, the remote's name and its object databases by hash name (md5, DVC 2's md5-dos2unix)."""
    from dvc.repo import Repo

    try:
        repo = Repo(root)
    except Exception as exc:  # not a DVC repository, a broken config: nothing to read back
        raise SarnetError(f"remote verification skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    name = remote or repo.config["core"].get("remote")
    if not name:
        repo.close()
        raise SarnetError("no DVC remote given and no default remote (`dvc remote default`)")
    try:
        remotes = {hash_name: repo.cloud.get_remote_odb(name, "verify-remote", hash_name=hash_name)
                   for hash_name in ("md5", "md5-dos2unix")}
    except Exception as exc:  # a cloud-versioned remote, an unknown name, a missing plugin: one line each
        repo.close()
        raise SarnetError(f"remote {name!r}: verification skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    return repo, name, remotes


def _listing(oid: str, cache: Any, odb: Any) -> list[str] | None:
    """The file md5s a folder manifest lists, from the local cache, else from the remote; None: neither has it."""
    for db in (cache, odb):
        try:
            with db.fs.open(db.oid_to_path(oid), "r") as manifest:
                return [entry["md5"] for entry in json.load(manifest)]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def check_remote(root: str | os.PathLike = ".", remote: str | None = None) -> RemoteCheck:
    """Which objects of dvc.lock's cached outputs (each file, each folder's manifest and every file it
    lists) the remote lacks. Raises SarnetError, in one line, for a remote that cannot be read."""
    repo, name, remotes = _open_remote(str(root), remote)
    result = RemoteCheck(name)
    try:
        caches = {"md5": repo.cache.local, "md5-dos2unix": repo.cache.legacy}
        wanted: dict[str, set[str]] = {hash_name: set() for hash_name in remotes}
        folders: dict[str, tuple[str, list[str]]] = {}  # manifest -> its hash name and file md5s
        for stage in repo.index.stages:
            for out in stage.outs:
                info = out.hash_info
                if not out.use_cache or not info or not info.value or info.name not in wanted:
                    continue  # committed in git, or never run: nothing to push
                oid, hash_name = info.value, info.name
                wanted[hash_name].add(oid)
                if oid.endswith(".dir"):
                    files = _listing(oid, caches[hash_name], remotes[hash_name])
                    if files is None:
                        result.unlisted.append(oid)
                    else:
                        folders[oid] = (hash_name, files)
                        wanted[hash_name].update(files)
        present: set[str] = set()
        for hash_name, oids in wanted.items():
            if oids:
                present.update(remotes[hash_name].oids_exist(oids))
                result.needed += len(oids)
                result.missing += sorted(oids - present)
        result.incomplete = sorted(oid for oid, (_, files) in folders.items() if oid in present and not set(files) <= present)
    except SarnetError:
        raise
    except Exception as exc:  # an unreachable remote: one line, the caller decides what it costs
        raise SarnetError(f"remote {name!r}: verification skipped, it cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    finally:
        repo.close()
    return result


def forget_incomplete(check: RemoteCheck, root: str | os.PathLike = ".") -> None:
    """Delete the manifests of folders the remote holds only in part, so that the next `dvc push`
    sees those folders as absent and uploads their missing files, then the manifest (last, as DVC
    uploads a folder). Until then `dvc status -c` says they are missing, which is the truth."""
    repo, _, remotes = _open_remote(str(root), check.remote)
    try:
        for oid in check.incomplete:
            for odb in remotes.values():
                if odb.exists(oid):
                    odb.fs.remove(odb.oid_to_path(oid))
    finally:
        repo.close()


def remote_summary(check: RemoteCheck) -> str:
    """One line: how complete the remote is."""
    if not check.missing and not check.unlisted:
        return f"remote {check.remote!r} holds all {check.needed} objects dvc.lock needs"
    unlisted = f", and {len(check.unlisted)} folder(s) whose file list neither the cache nor the remote holds" if check.unlisted else ""
    return (f"remote {check.remote!r} lacks {len(check.missing)} of the {check.needed} objects dvc.lock needs{unlisted}; "
            "`dvc pull` elsewhere would fail: push from a clone whose cache has them")
