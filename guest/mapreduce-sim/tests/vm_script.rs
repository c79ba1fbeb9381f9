//! The VM job node's script (`mapreduce::script::WordCountScript`, what `role=mr-job` runs) in
//! the simulator, under each seed's message loss, duplication, partitions, disk faults and
//! worker crashes: it loads its input, runs word count, reads the output back and compares it
//! with a local count, and must say ok.

use mapreduce_sim::{run_vm_job_script, Settings};

#[test]
fn the_vm_job_script_survives_the_simulators_faults() {
    let failures: Vec<(u64, String)> = (0..30)
        .filter_map(|seed| {
            let outcome = run_vm_job_script(&Settings::from_seed(seed), 3, 5);
            outcome.failure.map(|failure| (seed, format!("{}: {}", failure.check, failure.detail)))
        })
        .collect();
    assert!(failures.is_empty(), "seeds whose script failed: {failures:?}");
}
