"""The package's public face: importing it costs nothing, the app is built once on first use.

Each test runs in a fresh interpreter (a subprocess): what ``import aicm_tasks``
loads and builds depends on what was imported before, which in this pytest
process is everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import aicm_tasks


def run_python(code: str, **env: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object, returned here."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AICM_")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_importing_the_package_loads_no_celery_and_reads_no_environment() -> None:
    # An out-of-range variable: reading the environment would raise.
    result = run_python(
        """
        import json, sys
        import aicm_tasks
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("celery", "kombu", "redis"))
        try:
            aicm_tasks.track
            error = None
        except Exception as exc:
            error = type(exc).__name__
        print(json.dumps({"loaded": loaded, "error": error}))
        """,
        AICM_BATCH_SIZE="-5",
    )
    assert result["loaded"] == []
    # Read on first use instead, and refused there (tests/integration/test_bad_settings.py).
    assert result["error"] == "SettingsError"


def test_the_default_app_is_built_once_when_threads_touch_it_first_together() -> None:
    # Eight threads released by a barrier ask for track, app, settings and
    # track_many at once; create_app is slowed so that they all arrive while
    # the first build is under way.
    result = run_python(
        """
        import importlib, json, threading, time
        import aicm_tasks
        app_module = importlib.import_module("aicm_tasks.app")

        builds = []
        real_create_app = app_module.create_app

        def slow_create_app(*args, **kwargs):
            builds.append(threading.get_ident())
            time.sleep(0.2)
            return real_create_app(*args, **kwargs)

        app_module.create_app = slow_create_app
        barrier = threading.Barrier(8)
        seen = []

        def touch(name):
            barrier.wait()
            getattr(aicm_tasks, name)
            seen.append(id(aicm_tasks.app))

        names = ["track", "app", "settings", "track_many"] * 2
        threads = [threading.Thread(target=touch, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(json.dumps({
            "builds": len(builds),
            "apps": len(set(seen)),
            "track_of_app": aicm_tasks.track.app is aicm_tasks.app,
            "track_many_of_track": aicm_tasks.track_many.__self__ is aicm_tasks.track,
            "settings_of_app": aicm_tasks.settings is aicm_tasks.app.aicm_settings,
        }))
        """
    )
    assert result == {
        "builds": 1,
        "apps": 1,
        "track_of_app": True,
        "track_many_of_track": True,
        "settings_of_app": True,
    }


def test_celery_finds_the_app_that_the_package_builds_on_first_use() -> None:
    # What `celery -A aicm_tasks worker` does to find the app (celery.app.utils.find_app).
    result = run_python(
        """
        import json
        # The submodules aicm_tasks.app and aicm_tasks.settings loaded first: the
        # import system then sets them as attributes of the package, which must
        # not hide the app and the settings.
        from aicm_tasks import create_app
        from aicm_tasks.settings import Settings
        from celery.app.utils import find_app
        found = find_app("aicm_tasks")
        import aicm_tasks
        print(json.dumps({
            "app": type(found).__name__,
            "same": found is aicm_tasks.app,
            "settings": type(aicm_tasks.settings).__name__,
            "queue": aicm_tasks.settings.queue,
        }))
        """,
        AICM_QUEUE="layout.test",
    )
    assert result == {
        "app": "AicmCelery",
        "same": True,
        "settings": "Settings",
        "queue": "layout.test",
    }


def test_every_name_in_all_resolves() -> None:
    for name in aicm_tasks.__all__:
        assert getattr(aicm_tasks, name) is not None, name
    assert set(aicm_tasks.__all__) <= set(dir(aicm_tasks))


def test_the_limits_names_load_neither_the_sdk_nor_jwt_until_used() -> None:
    # UsageLimitExceeded subclasses the SDK's class, whose import took ~0.25 s:
    # `import aicm_tasks` and a look at the pre-flight check must not pay it.
    result = run_python(
        """
        import json, sys
        import aicm_tasks
        aicm_tasks.check_limits, aicm_tasks.UsageLimitError, aicm_tasks.TriggeredLimit
        before = sorted(m for m in sys.modules if m.split(".")[0] in ("aicostmanager", "jwt"))
        exc = aicm_tasks.UsageLimitExceeded
        import aicostmanager.client.exceptions as sdk
        print(json.dumps({
            "before": before,
            "sdk_subclass": issubclass(exc, sdk.UsageLimitExceeded),
            "ours": issubclass(exc, aicm_tasks.UsageLimitError),
            "same_class": exc is aicm_tasks.errors.UsageLimitExceeded,
        }))
        """
    )
    assert result == {"before": [], "sdk_subclass": True, "ours": True, "same_class": True}
