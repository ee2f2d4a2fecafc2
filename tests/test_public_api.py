"""The public names are pinned: removing or renaming one is a breaking change."""

import kaimon_kernel


def test_public_names_are_pinned() -> None:
    assert sorted(kaimon_kernel.__all__) == sorted(
        [
            "PROTOCOL_VERSION",
            "AmbiguousSession",
            "DeadKernelError",
            "KaimonError",
            "KernelTimeout",
            "ProtocolMismatch",
            "SessionNotFound",
            "load_ipython_extension",
            "serve",
            "stop",
            "unload_ipython_extension",
        ]
    )
    for name in kaimon_kernel.__all__:
        assert hasattr(kaimon_kernel, name), name
