//! CPU time the hypervisor gave to other guests while this one wanted it
//! (`steal` in /proc/stat). On a shared virtual machine it slows every step
//! with nothing in the guest to show for it: on one 2-core KVM guest it
//! reached 52% with a lone training run, whose images/s halved from one
//! minute to the next. A throughput measures the code only where this is
//! near 0, so runs and benchmarks report it beside their images/s.
//!
//! Read by hand rather than through the `procfs` crate: one line of a
//! format the kernel keeps stable (proc(5)), against a dependency tree of a
//! dozen crates.

/// The machine's CPU time counters at one moment, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuTimes {
    steal: u64,
    total: u64,
}

impl CpuTimes {
    /// The counters now; None where there is no /proc/stat with a steal
    /// column (not Linux, or a kernel before 2.6.11).
    pub fn now() -> Option<CpuTimes> {
        parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The share of all CPU time since `earlier` that was stolen: 0 when
    /// no tick passed between the two (none was seen stolen), so that every
    /// metrics line of a run has it and TensorBoard's series has no gaps.
    pub fn steal_since(&self, earlier: &CpuTimes) -> f64 {
        match self.total.saturating_sub(earlier.total) {
            0 => 0.0,
            total => self.steal.saturating_sub(earlier.steal) as f64 / total as f64,
        }
    }
}

/// The steal share between `earlier` and now, when both were read.
pub fn steal_since(earlier: Option<CpuTimes>) -> Option<f64> {
    Some(CpuTimes::now()?.steal_since(&earlier?))
}

/// "host steal 31%" where at least 1% was stolen: the words the progress
/// lines and summaries add after their images/s; None below it.
pub fn shown(fraction: Option<f64>) -> Option<String> {
    fraction.filter(|&f| f >= 0.01).map(|f| format!("host steal {:.0}%", 100.0 * f))
}

/// The summed `cpu` line: user nice system idle iowait irq softirq steal,
/// then guest and guest_nice, which user and nice already count.
fn parse(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> =
        line.split_whitespace().skip(1).take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    (ticks.len() == 8).then(|| CpuTimes { steal: ticks[7], total: ticks.iter().sum() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_its_share_of_every_tick_and_guest_time_is_not_counted_twice() {
        let before = parse("cpu  100 0 0 100 0 0 0 0 50 0\ncpu0 50 0 0 50 0 0 0 0 25 0\n").unwrap();
        let after = parse("cpu  160 20 0 120 0 0 0 100 80 0\ncpu0 1 2 3 4 5 6 7 8 9 0\n").unwrap();
        assert_eq!(before, CpuTimes { steal: 0, total: 200 });
        // 60 user + 20 nice + 20 idle + 100 steal: half of it stolen.
        assert_eq!(after.steal_since(&before), 0.5);
        assert_eq!(after.steal_since(&after), 0.0);
    }

    #[test]
    fn steal_is_shown_from_one_percent() {
        assert_eq!(shown(Some(0.31)), Some("host steal 31%".to_string()));
        assert_eq!(shown(Some(0.004)), None);
        assert_eq!(shown(None), None);
    }

    #[test]
    fn a_kernel_without_the_steal_column_gives_none() {
        assert_eq!(parse("cpu  1 2 3 4 5 6 7\n"), None);
        assert_eq!(parse("intr 1 2 3\n"), None);
        assert_eq!(parse("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn this_machine_is_read_where_it_is_linux() {
        if cfg!(target_os = "linux") {
            assert!(CpuTimes::now().is_some());
        }
    }
}
