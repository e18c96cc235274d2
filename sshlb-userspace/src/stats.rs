//! Reads the data plane's global per-CPU outcome counters.

use aya::maps::{MapData, PerCpuArray};
use sshlb_common::stats::{COUNT, NAMES};

/// One counter, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    /// Stable label (`sshlb_common::stats::NAMES`).
    pub name: &'static str,
    /// Sum over all CPUs.
    pub value: u64,
}

/// Error reading the counters.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The map could not be read.
    #[error("reading the STATS map failed")]
    Map(#[from] aya::maps::MapError),
}

/// Sums every counter of `map` over CPUs, in index order.
pub fn read<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, u64>,
) -> Result<Vec<Counter>, StatsError> {
    (0..COUNT)
        .map(|index| {
            let per_cpu = map.get(&index, 0)?;
            Ok(Counter { name: NAMES[index as usize], value: per_cpu.iter().sum() })
        })
        .collect()
}

/// Renders counters as aligned `name value` lines; zero counters are left out unless `all`.
pub fn render(counters: &[Counter], all: bool) -> String {
    let width = counters.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in counters.iter().filter(|c| all || c.value != 0) {
        out.push_str(&format!("{:<width$}  {}\n", c.name, c.value));
    }
    if out.is_empty() {
        out.push_str("(no packets seen yet)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_hides_zeros_unless_asked_and_aligns() {
        let counters = [
            Counter { name: "pass_not_ip", value: 3 },
            Counter { name: "service_hit", value: 0 },
            Counter { name: "drop_truncated_tcp", value: 12 },
        ];
        assert_eq!(render(&counters, false), "pass_not_ip         3\ndrop_truncated_tcp  12\n");
        assert!(render(&counters, true).contains("service_hit         0\n"));
        assert_eq!(render(&counters[1..2], false), "(no packets seen yet)\n");
    }
}
