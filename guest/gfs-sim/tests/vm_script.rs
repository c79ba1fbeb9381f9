//! The VM client's script (`gfs::script::PatternScript`, what `role=gfs-client` runs) on a
//! simulated cluster under the simulator's faults: lossy, reordering, partitioned network,
//! failing and slow disks, chunkserver crashes. It must finish with the file read back intact.

use gfs::pcg::Pcg32;
use gfs::script::PatternScript;
use gfs_sim::world::{DeviceFaults, DiskFaults, Role, World};
use gfs_sim::{Settings, MASTER_ID};

/// Runs the script in a world drawn from `seed`; its result, or why it never finished.
fn run_script(seed: u64) -> Result<(), String> {
    let mut world = World::new(seed, Settings::from_seed(seed).config());
    world.drop_per_mille = 30;
    world.duplicate_per_mille = 20;
    world.delay_max_ms = 15;
    world.start_faults(DeviceFaults {
        disk: DiskFaults { error_per_mille: 20, slow_per_mille: 30, slow_ms: 100 },
        partition_every_ms: 3000,
    });
    world.add_node(MASTER_ID, Role::Master);
    let servers: Vec<usize> = (1..=4).map(|k| world.add_node(10 * k, Role::Chunkserver)).collect();
    let client = world.add_node(50, Role::Client);
    let script = PatternScript::new("/vm/pattern".into(), seed, 40_000, 0, 60);
    world.set_workload(client, script.boxed());
    let mut faults = Pcg32::new(seed, 0xFA17);
    let mut down: Option<(usize, u64)> = None;
    while world.now_ms < 70_000 {
        if let Some(result) = world.workload_result(client) {
            return result.clone();
        }
        let until = world.now_ms + 10;
        while world.run_one(until) {}
        world.maybe_partition(&mut faults, 10, 3000);
        // One chunkserver down at a time, for up to a second and a half.
        match down {
            Some((index, at_ms)) if at_ms <= world.now_ms => {
                world.boot(index);
                down = None;
            }
            None if faults.chance(10, 2000) => {
                let index = servers[faults.below(servers.len() as u64) as usize];
                world.crash(index);
                down = Some((index, world.now_ms + faults.range_inclusive(50, 1500)));
            }
            _ => {}
        }
    }
    Err("the script did not finish in 70 simulated seconds".into())
}

#[test]
fn the_vm_client_script_survives_the_simulators_faults() {
    let failures: Vec<(u64, String)> =
        (0..40).filter_map(|seed| run_script(seed).err().map(|error| (seed, error))).collect();
    assert!(failures.is_empty(), "seeds whose script failed: {failures:?}");
}
