//! A simulated fleet of centrifugal pumps for tests, benchmarks and the demo: physics
//! ([`pump`]), manufacturers with their own names, units and rates ([`vendor`]), and a fleet
//! plan with faults and drift that doubles as ground truth ([`fleet`]). Deterministic from a
//! seed and free of I/O: callers write the readings wherever they go (CSV files in the SKAB
//! layout, MQTT, a Modbus server).

pub mod fleet;
pub mod pump;
pub mod vendor;

pub use fleet::{Drift, DriftKind, Fault, FaultKind, Fleet, FleetSpec, PumpPlan, PumpSim, SITES, Sample};
pub use vendor::{MANUFACTURERS, Manufacturer, Signal};

use impeller_core::table::format_timestamp;

/// The header of a SKAB-layout CSV file for this manufacturer's readings.
pub fn csv_header(m: &Manufacturer) -> String {
    let mut line = String::from("datetime");
    for c in m.columns() {
        line.push(';');
        line.push_str(c);
    }
    line.push_str(";anomaly;changepoint\n");
    line
}

/// One sample as a SKAB-layout CSV line (labels from the ground truth).
pub fn csv_line(s: &Sample) -> String {
    use std::fmt::Write;
    let mut line = format_timestamp(s.ts_ms);
    for v in &s.values {
        let _ = write!(line, ";{v:.4}");
    }
    let _ = writeln!(line, ";{};{}", u8::from(s.faulty), u8::from(s.onset));
    line
}

#[cfg(test)]
mod tests {
    use impeller_core::table::{CsvFormat, parse_csv};

    use super::*;

    #[test]
    fn written_csv_reads_back_as_skab() {
        let fleet = Fleet::plan(&FleetSpec {
            pumps: 3,
            seed: 1,
            start_ms: 1_700_000_000_000,
            duration_s: 600,
            faulty_share: 1.0,
            faults_between_s: (300, 300),
            site_drifts: Vec::new(),
        });
        for p in &fleet.pumps {
            let sim = fleet.simulate(p, fleet.start_ms, fleet.end_ms);
            let m = sim.manufacturer();
            let samples: Vec<Sample> = sim.collect();
            let text: String = std::iter::once(csv_header(&m)).chain(samples.iter().map(csv_line)).collect();
            let table = parse_csv(text.as_bytes(), &p.id, &CsvFormat::SKAB).unwrap();
            assert_eq!(table.len(), samples.len());
            assert_eq!(table.channels.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), m.columns());
            assert_eq!(table.timestamps[1] - table.timestamps[0], m.sample_ms as i64);
            let labels = table.labels.as_ref().unwrap();
            assert_eq!(labels.iter().filter(|&&l| l).count(), samples.iter().filter(|s| s.faulty).count());
        }
    }
}
