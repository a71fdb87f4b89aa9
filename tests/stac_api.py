"""A real STAC API on 127.0.0.1 for tests: ``rustac serve`` (the rustac package's server, in-memory
backend), started as a subprocess on a free port and filled with the items a test gives it.

    def test_search(stac_api, tmp_path):
        url = stac_api.serve(items)        # pystac.Item list -> the API's root URL
        ...                                # pystac-client searches it as any STAC API
        stac_api.serve(items + newer)      # "the next day": the same URL, more items

The memory backend implements core item search (collections, bbox, intersects, datetime, limit and paging),
not the Query or Filter extensions: a search with a ``query`` is filtered client-side by scenewatch, as for
any API without them.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

__all__ = ["StacApi", "stac_api"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rustac() -> str:
    found = shutil.which("rustac", path=str(Path(sys.executable).parent)) or shutil.which("rustac")
    if found is None:
        pytest.fail("rustac is not installed (it is in the [test] extra): pip install -e .[test]")
    return found


class StacApi:
    """A ``rustac serve`` process on a free loopback port; :meth:`serve` (re)starts it with items."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._fills = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self, items: Sequence[Any]) -> str:
        """Serve exactly ``items`` (pystac Items or dicts; their collections are created), return the URL."""
        self.stop()
        self._fills += 1
        path = self.folder / f"items-{self._fills}.json"
        features = [i if isinstance(i, dict) else i.to_dict(include_self_link=False) for i in items]
        path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        self._process = subprocess.Popen([_rustac(), "serve", "--create-collections", "-a", f"127.0.0.1:{self.port}",
                                          str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:  # ready once its search answers with every item
            try:
                with urllib.request.urlopen(f"{self.url}/search?limit=1000", timeout=5) as response:
                    if len(json.load(response)["features"]) == len(features):
                        return self.url
            except OSError:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rustac serve did not start on port {self.port}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=30)
            self._process = None


@pytest.fixture
def stac_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StacApi]:
    api = StacApi(tmp_path_factory.mktemp("stac-api"))
    try:
        yield api
    finally:
        api.stop()
