"""The default thread count follows the cores, the local workers and the load (issue 19)."""

from lab.threads import default_threads


def test_an_idle_machine_gives_one_worker_every_core():
    assert default_threads(devices=1, cores=8, load=0.0, env={}) == 8


def test_local_workers_share_the_cores():
    assert default_threads(devices=4, cores=8, load=0.0, env={}) == 2
    assert default_threads(devices=1, cores=8, load=0.0, env={"LOCAL_WORLD_SIZE": "8"}) == 1


def test_a_busy_machine_leaves_only_its_idle_cores():
    assert default_threads(devices=1, cores=2, load=1.2, env={}) == 1  # beside one busy process: 1, not 2
    assert default_threads(devices=1, cores=16, load=5.0, env={}) == 11
    assert default_threads(devices=1, cores=2, load=9.0, env={}) == 1  # never fewer than one


def test_a_launcher_that_sized_its_workers_is_followed():
    assert default_threads(devices=1, cores=8, load=0.0, env={"OMP_NUM_THREADS": "2"}) == 2
