"""A fake Google Cloud Storage for tests: `gcp-storage-emulator`'s in-memory JSON API server, with the two parts
of GCS's object semantics that tensorstore's GCS driver (Orbax's array writer) relies on and the emulator leaves
out: the `x-goog-generation` header on media downloads (tensorstore reads each object's generation from it;
without it: "Malformed StorageGeneration") and the `ifGenerationMatch` precondition on uploads (OCDBT's manifest
is updated by conditional writes; `0` = only if absent; a mismatch answers 412).

    with serve() as url:   # point gcsfs (STORAGE_EMULATOR_HOST) and tensorstore (TENSORSTORE_GCS_HTTP_URL) at url
        ...
"""
from __future__ import annotations

import contextlib
import socket
from http import HTTPStatus


def _with_generation_header(download):
    def handler(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration") or 1)
    handler.patched = True
    return handler


def _with_generation_precondition(insert):
    from gcp_storage_emulator.exceptions import NotFound

    def handler(request, response, storage, *args, **kwargs):
        want = request.query.get("ifGenerationMatch")
        if want:
            name = (request.query.get("name") or [None])[0]
            if name is None and isinstance(request.data, dict):  # multipart: the name is in the metadata part
                name = request.data.get("meta", {}).get("name")
            try:
                have = str(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
            except NotFound:
                have = "0"
            if have != want[0]:  # the server is single-threaded: no write can come between check and insert
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "Precondition Failed"}})
                return
        return insert(request, response, storage, *args, **kwargs)
    handler.patched = True
    return handler


def _patch_emulator() -> None:
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    if getattr(objects.download, "patched", False):
        return
    new = {objects.download: _with_generation_header(objects.download),
           objects.insert: _with_generation_precondition(objects.insert)}
    for _, methods in server.HANDLERS:
        for method, fn in list(methods.items()):
            if fn in new:
                methods[method] = new[fn]
    objects.download, objects.insert = new[objects.download], new[objects.insert]  # objects.get calls download


@contextlib.contextmanager
def serve(bucket: str = "bucket"):
    """An in-memory fake GCS holding an empty `bucket`, on a free local port; yields its URL."""
    from gcp_storage_emulator.server import create_server

    _patch_emulator()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
