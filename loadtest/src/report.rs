//! The end of a run: merged figures, a table for people, a JSON line for records, a PNG plot.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::oracle::{DeviceLog, SentLog, Verdict, judge};
use crate::stats::Latency;
use crate::swarm::ShardResult;

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub phase: u32,
    pub target_rate_per_sec: f64,
    pub duration_secs: f64,
    pub processes: usize,
    pub connections: u64,
    pub acked_messages: u64,
    pub messages_per_sec: f64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    pub ack_ms: Percentiles,
    pub delivery_ms: Percentiles,
    pub send_retries: u64,
    pub send_failures: u64,
    pub reconnects: u64,
    pub verdict: Verdict,
    pub passed: bool,
    /// Server CPU time (all given server processes) per delivery, when server pids were given.
    pub server_cpu_us_per_delivery: Option<f64>,
    pub unix_time: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(latency: &Latency) -> Self {
        Self {
            p50: latency.ms(0.5),
            p90: latency.ms(0.9),
            p99: latency.ms(0.99),
            p999: latency.ms(0.999),
            max: latency.max_ms(),
        }
    }
}

/// Merges the shards' results and judges them.
pub fn merge(
    scenario: &str,
    phase: u32,
    target_rate: f64,
    duration_secs: f64,
    shards: &[ShardResult],
    server_cpu_secs: Option<f64>,
) -> (RunReport, Latency) {
    let mut sent = SentLog::new();
    let mut ack = Latency::default();
    let mut delivery = Latency::default();
    let (mut deliveries, mut retries, mut failures, mut reconnects, mut connections) = (0, 0, 0, 0, 0);
    let mut devices: Vec<(Vec<u64>, DeviceLog)> = Vec::new();
    for shard in shards {
        for &(key, count) in &shard.sent {
            *sent.entry(key).or_default() += count;
        }
        ack.merge(&Latency::from_wire(&shard.ack_latency));
        delivery.merge(&Latency::from_wire(&shard.delivery_latency));
        deliveries += shard.deliveries;
        retries += shard.send_retries;
        failures += shard.send_failures;
        reconnects += shard.reconnects;
        connections += shard.connections;
        for (rooms, log) in &shard.devices {
            devices.push((rooms.clone(), log.iter().cloned().collect()));
        }
    }
    let verdict = judge(&sent, devices.iter().map(|(rooms, log)| (rooms.as_slice(), log)));
    let acked: u64 = sent.values().sum();
    let report = RunReport {
        scenario: scenario.into(),
        phase,
        target_rate_per_sec: target_rate,
        duration_secs,
        processes: shards.len(),
        connections,
        acked_messages: acked,
        messages_per_sec: acked as f64 / duration_secs.max(1e-9),
        deliveries,
        deliveries_per_sec: deliveries as f64 / duration_secs.max(1e-9),
        ack_ms: Percentiles::of(&ack),
        delivery_ms: Percentiles::of(&delivery),
        send_retries: retries,
        send_failures: failures,
        reconnects,
        passed: verdict.ok() && failures == 0,
        verdict,
        server_cpu_us_per_delivery: server_cpu_secs.map(|s| s * 1e6 / deliveries.max(1) as f64),
        unix_time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };
    (report, delivery)
}

pub fn print_table(r: &RunReport) {
    let v = &r.verdict;
    println!();
    println!("  {:<28} {} (phase {})", "scenario", r.scenario, r.phase);
    println!(
        "  {:<28} {:.0} msg/s for {:.0} s, {} process(es)",
        "target", r.target_rate_per_sec, r.duration_secs, r.processes
    );
    println!("  {:<28} {}", "connections", r.connections);
    println!("  {:<28} {} ({:.0}/s)", "messages acknowledged", r.acked_messages, r.messages_per_sec);
    println!("  {:<28} {} ({:.0}/s)", "deliveries", r.deliveries, r.deliveries_per_sec);
    let p = |x: &Percentiles| {
        format!("p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1} ms", x.p50, x.p90, x.p99, x.p999, x.max)
    };
    println!("  {:<28} {}", "ack latency", p(&r.ack_ms));
    println!("  {:<28} {}", "delivery latency", p(&r.delivery_ms));
    if let Some(cpu) = r.server_cpu_us_per_delivery {
        println!("  {:<28} {:.2} us", "server CPU per delivery", cpu);
    }
    println!(
        "  {:<28} {} sends retried, {} never acknowledged, {} reconnects",
        "incidents", r.send_retries, r.send_failures, r.reconnects
    );
    println!(
        "  {:<28} expected {}, delivered {}, lost {}, duplicated {}, out of order {}",
        "oracle", v.expected, v.delivered, v.lost, v.duplicated, v.out_of_order
    );
    println!("  {:<28} {}", "verdict", if r.passed { "PASS" } else { "FAIL" });
}

pub fn append_json(path: &Path, r: &RunReport) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(file, "{}", serde_json::to_string(r)?)?;
    Ok(())
}

/// Fonts the plot may use for its labels; without one the plot is drawn without text.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Plots the delivery latency distribution (milliseconds by percentile) as a PNG.
pub fn plot(path: &Path, title: &str, latency: &Latency) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let has_font = FONT_CANDIDATES.iter().filter_map(|p| std::fs::read(p).ok()).next().is_some_and(|bytes| {
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    });
    // x: "nines" (0 = p0, 1 = p90, 2 = p99, 3 = p99.9, 4 = p99.99).
    let points: Vec<(f64, f64)> = latency.curve().into_iter().map(|(q, ms)| (-(1.0 - q).log10(), ms)).collect();
    let max_ms = points.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.1;
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20).x_label_area_size(40).y_label_area_size(60);
    if has_font {
        builder.caption(title, ("sans-serif", 22));
    }
    let mut chart = builder.build_cartesian_2d(0f64..4f64, 0f64..max_ms)?;
    if has_font {
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("delivery latency (ms)")
            .x_label_formatter(&|x| match x.round() as i64 {
                0 => "p0".into(),
                1 => "p90".into(),
                2 => "p99".into(),
                3 => "p99.9".into(),
                _ => "p99.99".into(),
            })
            .x_labels(5)
            .draw()?;
    } else {
        chart.configure_mesh().disable_x_mesh().disable_y_mesh().draw()?;
    }
    chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2)))?;
    root.present()?;
    Ok(())
}
