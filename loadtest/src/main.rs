//! `tidings-load`: points a swarm of simulated phones at one or several tidings nodes, shows a live
//! progress bar, and ends with a table, a JSON line (`--json-out`) and a PNG latency plot
//! (`--plot-dir`). Loopback targets only; every run is bounded in time.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::{Args as ClapArgs, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tidings_loadtest::procfs::{cpu_secs, rss_kib};
use tidings_loadtest::report::{self, RunReport};
use tidings_loadtest::scenario;
use tidings_loadtest::swarm::{self, Behaviour, Faults, Progress, Roster, RosterPlan, ShardResult, Target};
use tidings_loadtest::{media_bench, push_bench, social_bench, stall_bench};

#[derive(Parser)]
#[command(about = "The tidings load swarm (loopback targets only)")]
struct Cli {
    /// A node, host:port on 127.0.0.0/8; repeat for several nodes (users are spread over them).
    #[arg(long = "server", default_value = "127.0.0.1:8080")]
    servers: Vec<String>,
    /// Connect from 127.0.0.1 .. 127.0.0.N (one address gives only ~28k ports).
    #[arg(long, default_value_t = 1)]
    source_ips: u8,
    /// Prefix of the usernames this run signs up; each run needs its own.
    #[arg(long)]
    prefix: Option<String>,
    /// Swarm processes (one process may hold ~20k open files here).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Server process ids, to report the servers' CPU time per delivery (and memory for `idle`).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Append one JSON line per run to this file.
    #[arg(long, default_value = "loadtest-results.jsonl")]
    json_out: PathBuf,
    /// Write a PNG latency plot per run into this directory.
    #[arg(long, default_value = "loadtest-plots")]
    plot_dir: PathBuf,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(ClapArgs, Clone)]
struct BehaviourArgs {
    /// Messages per second over all senders.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    /// Device reconnects per second over the swarm.
    #[arg(long, default_value_t = 0.0)]
    churn_per_sec: f64,
    #[arg(long)]
    typing: bool,
    #[arg(long)]
    read_receipts: bool,
    #[arg(long, default_value_t = 10.0)]
    drain_secs: f64,
}

impl BehaviourArgs {
    fn behaviour(&self, phase: u32, rate: f64) -> Behaviour {
        Behaviour {
            rate_per_sec: rate,
            duration_secs: self.duration_secs,
            body_bytes: self.body_bytes,
            churn_per_sec: self.churn_per_sec,
            typing: self.typing,
            read_receipts: self.read_receipts,
            drain_secs: self.drain_secs,
            phase,
        }
    }
}

#[derive(Subcommand)]
enum Scenario {
    /// Hold N idle synced connections; report the servers' memory per connection.
    Idle {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 3)]
        settle_secs: u64,
    },
    /// Direct rooms, one sender each, at a fixed total rate.
    Direct {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        #[command(flatten)]
        behaviour: BehaviourArgs,
    },
    /// R group rooms of K members; every member sends (the total rate is split evenly).
    Fanout {
        #[arg(long, default_value_t = 200)]
        rooms: usize,
        #[arg(long, default_value_t = 10)]
        members: usize,
        #[arg(long, default_value_t = 1)]
        devices: usize,
        #[command(flatten)]
        behaviour: BehaviourArgs,
    },
    /// City bots: local groups, a few celebrities with large fan rooms, typing, receipts, churn.
    City {
        #[arg(long, default_value_t = 1000)]
        users: usize,
        #[arg(long, default_value_t = 10)]
        cities: usize,
        #[arg(long, default_value_t = 3)]
        celebrities: usize,
        #[arg(long, default_value_t = 200)]
        fans: usize,
        #[command(flatten)]
        behaviour: BehaviourArgs,
    },
    /// Fan-out at a rising rate (doubling) until p99 delivery latency passes a bound or anything is
    /// lost; reports the last rate that held.
    MaxRate {
        #[arg(long, default_value_t = 200)]
        rooms: usize,
        #[arg(long, default_value_t = 10)]
        members: usize,
        #[arg(long, default_value_t = 500.0)]
        start_rate: f64,
        #[arg(long, default_value_t = 100.0)]
        p99_bound_ms: f64,
        #[arg(long, default_value_t = 8)]
        max_steps: u32,
        #[command(flatten)]
        behaviour: BehaviourArgs,
    },
    /// The push pipeline against fake APNs and FCM servers: starts its own tidings process (from
    /// --tidings-bin) wired to fakes in this process, queues one push per offline recipient, and
    /// measures notifications/s and send-to-provider latency. Ignores --server.
    Push {
        #[arg(long, default_value = "target/release/tidings")]
        tidings_bin: PathBuf,
        #[arg(long, default_value_t = 2000)]
        recipients: usize,
        /// Every fake provider answer waits this long (real APNs answers in tens of ms).
        #[arg(long, default_value_t = 0)]
        provider_delay_ms: u64,
        #[arg(long, default_value_t = 100)]
        apns_concurrency: usize,
        #[arg(long, default_value_t = 100)]
        fcm_concurrency: usize,
        #[arg(long, default_value_t = 100)]
        grace_ms: u64,
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        /// Kill the server after the sends and start it again once every push is due: the pushes
        /// then leave as one backlog, at the pipeline's own rate (use a --grace-ms longer than
        /// the sends take).
        #[arg(long)]
        backlog: bool,
    },
    /// Images: uploads/s and MB/s (with the server's peak memory), 320 px variants made/s (JPEG and
    /// WebP, from 1 and 4 MP photos) with the server's CPU per variant, cached variants served/s;
    /// and `vipsthumbnail` (Debian's libvips-tools) on the same images. Targets --server.
    Media {
        /// Images of each size.
        #[arg(long, default_value_t = 10)]
        images: usize,
        /// Image sizes in megapixels, comma-separated.
        #[arg(long, default_value = "1,4")]
        megapixels: String,
        #[arg(long, default_value_t = 4)]
        upload_concurrency: usize,
        #[arg(long, default_value_t = 2000)]
        cached_requests: usize,
        #[arg(long, default_value_t = 32)]
        cached_concurrency: usize,
    },
    /// The social scenario (city bots for the social side): users join and follow a few others and
    /// every star (some follow back), then post, like and comment at fixed rates; the oracle reads
    /// every home feed to its end and every post's counts. Targets --server.
    Social {
        #[arg(long, default_value_t = 200)]
        users: usize,
        #[arg(long, default_value_t = 3)]
        stars: usize,
        /// The share of posts the stars make.
        #[arg(long, default_value_t = 0.3)]
        star_share: f64,
        #[arg(long, default_value_t = 10)]
        follows_per_user: usize,
        #[arg(long, default_value_t = 0.5)]
        follow_back: f64,
        #[arg(long, default_value_t = 20.0)]
        posts_per_sec: f64,
        #[arg(long, default_value_t = 100.0)]
        likes_per_sec: f64,
        #[arg(long, default_value_t = 20.0)]
        comments_per_sec: f64,
        #[arg(long, default_value_t = 20.0)]
        duration_secs: f64,
        #[arg(long, default_value_t = 30.0)]
        drain_secs: f64,
    },
    /// Clients that stop reading: R readers in a group stop reading (small socket buffers) while a
    /// sender writes on, until the server has told each to resync; reports the server's memory per
    /// stalled reader and checks what each reads afterwards (its events in order, RESYNC_REQUIRED,
    /// close 1008). Targets the first --server; needs its --server-pid.
    Stall {
        #[arg(long, default_value_t = 200)]
        readers: usize,
        #[arg(long, default_value_t = 4000)]
        body_bytes: usize,
        #[arg(long, default_value_t = 200.0)]
        messages_per_sec: f64,
        #[arg(long, default_value_t = 180)]
        timeout_secs: u64,
    },
    /// Internal: one shard of a multi-process run (reads its roster, prints its result as JSON).
    #[command(hide = true)]
    Shard {
        #[arg(long)]
        roster: PathBuf,
        #[arg(long)]
        behaviour: String,
        #[arg(long)]
        shard: usize,
        #[arg(long)]
        shards: usize,
    },
}

fn check_loopback(server: &str) -> anyhow::Result<()> {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h).trim_matches(['[', ']']);
    let ip: IpAddr = if host == "localhost" { IpAddr::from([127, 0, 0, 1]) } else { host.parse()? };
    ensure!(ip.is_loopback(), "tidings-load only targets loopback addresses (127.0.0.0/8, ::1), not {ip}");
    Ok(())
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").expect("valid template"));
    bar.set_message(message.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

struct Session {
    cli_servers: Vec<String>,
    target: Target,
    processes: usize,
    server_pids: Vec<u32>,
    json_out: PathBuf,
    plot_dir: PathBuf,
}

impl Session {
    /// Runs one phase on every shard and reports it.
    async fn phase(&self, name: &str, roster: &Roster, behaviour: Behaviour) -> anyhow::Result<RunReport> {
        let cpu_before = cpu_secs(&self.server_pids);
        let shards = if self.processes <= 1 {
            vec![self.local_shard(roster, &behaviour).await?]
        } else {
            self.child_shards(roster, &behaviour).await?
        };
        let cpu = cpu_before.zip(cpu_secs(&self.server_pids)).map(|(a, b)| b - a);
        let (report, delivery) =
            report::merge(name, behaviour.phase, behaviour.rate_per_sec, behaviour.duration_secs, &shards, cpu);
        report::print_table(&report);
        report::append_json(&self.json_out, &report)?;
        std::fs::create_dir_all(&self.plot_dir)?;
        let plot = self.plot_dir.join(format!("{name}-{}-phase{}.png", report.unix_time, behaviour.phase));
        let title = format!("{name}: {:.0} msg/s target, {} connections", behaviour.rate_per_sec, report.connections);
        match report::plot(&plot, &title, &delivery) {
            Ok(()) => println!("  {:<28} {}", "plot", plot.display()),
            Err(e) => eprintln!("  plot failed: {e}"),
        }
        Ok(report)
    }

    async fn local_shard(&self, roster: &Roster, behaviour: &Behaviour) -> anyhow::Result<ShardResult> {
        let progress = Arc::new(Progress::default());
        let total = behaviour.duration_secs + behaviour.drain_secs;
        let bar = spinner("connecting");
        let run = {
            let (roster, target, behaviour, progress) =
                (roster.clone(), self.target.clone(), behaviour.clone(), progress.clone());
            tokio::spawn(async move {
                swarm::run_shard(&roster, &target, &behaviour, 0, 1, Faults::default(), progress).await
            })
        };
        let started = Instant::now();
        while !run.is_finished() {
            tokio::time::sleep(Duration::from_millis(250)).await;
            bar.set_message(format!(
                "{} connected, {} acked, {} delivered (phase of up to {:.0} s, {:.0} s in)",
                progress.connected.load(Ordering::Relaxed),
                progress.acked.load(Ordering::Relaxed),
                progress.delivered.load(Ordering::Relaxed),
                total,
                started.elapsed().as_secs_f64()
            ));
        }
        bar.finish_and_clear();
        run.await?
    }

    async fn child_shards(&self, roster: &Roster, behaviour: &Behaviour) -> anyhow::Result<Vec<ShardResult>> {
        let dir = std::env::temp_dir().join(format!("tidings-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let roster_path = dir.join("roster.json");
        std::fs::write(&roster_path, serde_json::to_vec(roster)?)?;
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        for shard in 0..self.processes {
            let mut cmd = tokio::process::Command::new(&exe);
            for server in &self.cli_servers {
                cmd.arg("--server").arg(server);
            }
            cmd.arg("--source-ips").arg(self.target.source_ips.len().max(1).to_string());
            cmd.arg("shard").arg("--roster").arg(&roster_path);
            cmd.arg("--behaviour").arg(serde_json::to_string(behaviour)?);
            cmd.arg("--shard").arg(shard.to_string()).arg("--shards").arg(self.processes.to_string());
            cmd.stdout(Stdio::piped()).kill_on_drop(true);
            children.push(cmd.spawn().context("starting a swarm process")?);
        }
        let bar = spinner(&format!("{} swarm processes running", self.processes));
        let mut results = Vec::new();
        for child in children {
            let output = child.wait_with_output().await?;
            ensure!(output.status.success(), "a swarm process failed: {}", output.status);
            results.push(serde_json::from_slice(&output.stdout).context("reading a shard's result")?);
        }
        bar.finish_and_clear();
        let _ = std::fs::remove_dir_all(&dir);
        Ok(results)
    }
}

async fn idle(session: &Session, prefix: &str, connections: usize, settle_secs: u64) -> anyhow::Result<()> {
    ensure!(!session.server_pids.is_empty(), "idle needs --server-pid to read the server's memory");
    let users = (connections / 50).max(1);
    let plan = RosterPlan { users, devices_per_user: 1, rooms: Vec::new() };
    let bar = spinner("signing up");
    let roster = swarm::setup(&session.target, &plan, prefix, &Progress::default()).await?;
    bar.finish_and_clear();
    tokio::time::sleep(Duration::from_secs(settle_secs)).await;
    let before = rss_kib(&session.server_pids)?;
    let bar = ProgressBar::new(connections as u64);
    bar.set_style(ProgressStyle::with_template("[{elapsed_precise}] {bar:40} {pos}/{len} connections").expect("valid"));
    let mut held = Vec::with_capacity(connections);
    for i in 0..connections {
        let user = &roster.users[i % users];
        let ws = format!("ws://{}", session.target.servers[user.server]);
        let source = (!session.target.source_ips.is_empty())
            .then(|| session.target.source_ips[i % session.target.source_ips.len()]);
        let conn = tidings_client::Connection::connect_from(source, &ws, &user.devices[0], Default::default()).await?;
        conn.sync(0).await?;
        held.push(conn);
        bar.inc(1);
    }
    bar.finish_and_clear();
    tokio::time::sleep(Duration::from_secs(settle_secs)).await;
    let after = rss_kib(&session.server_pids)?;
    let per = (after.saturating_sub(before)) as f64 / connections as f64;
    println!("idle connections: {connections} over {users} users");
    println!("server RSS: {before} KiB before, {after} KiB after: {per:.1} KiB per connection");
    Ok(())
}

async fn push(bench: &push_bench::PushBench) -> anyhow::Result<()> {
    let bar = ProgressBar::new(bench.recipients as u64);
    bar.set_style(ProgressStyle::with_template("[{elapsed_precise}] {msg:8} {bar:40} {pos}/{len}").expect("template"));
    let report = push_bench::run(bench, |phase, done, _| {
        bar.set_message(phase.to_owned());
        bar.set_position(done as u64);
    })
    .await?;
    bar.finish_and_clear();
    let row = |name: &str, value: String| println!("  {name:<34} {value}");
    println!("push pipeline against fake APNs + FCM");
    row("recipients (iOS / Android)", format!("{} ({} / {})", report.recipients, report.apns, report.fcm));
    row("provider delay", format!("{} ms", bench.provider_delay.as_millis()));
    row("concurrency (APNs / FCM)", format!("{} / {}", bench.apns_concurrency, bench.fcm_concurrency));
    row("grace window", format!("{} ms", bench.grace_ms));
    if bench.backlog {
        row("pushes", "one backlog, after a restart".into());
    }
    row("sends acknowledged in", format!("{:.2} s", report.send_secs));
    row("first to last push", format!("{:.2} s", report.push_secs));
    row("notifications/s", format!("{:.0}", report.notifications_per_sec));
    let l = &report.latency;
    row("send ack -> provider (ms)", format!("p50 {:.0}  p99 {:.0}  max {:.0}", l.ms(0.5), l.ms(0.99), l.max_ms()));
    let per = |cpu: f64| format!("{:.0} us", cpu * 1e6 / report.recipients as f64);
    if let Some(cpu) = report.server_cpu_send_secs {
        row("server CPU per send (while sending)", per(cpu));
    }
    if let Some(cpu) = report.server_cpu_push_secs {
        let when = if bench.backlog { "after the restart" } else { "after sending" };
        row(&format!("server CPU per push ({when})"), per(cpu));
    }
    Ok(())
}

async fn stall(bench: &stall_bench::StallBench) -> anyhow::Result<()> {
    let bar = spinner(&format!("{} readers stop reading while {} B messages go out", bench.readers, bench.body_bytes));
    let report = stall_bench::run(bench).await?;
    bar.finish_and_clear();
    let row = |name: &str, value: String| println!("  {name:<40} {value}");
    println!("clients that stop reading");
    row(
        "readers / message size / rate",
        format!("{} / {} B / {:.0} msg/s", report.readers, bench.body_bytes, bench.messages_per_sec),
    );
    row("messages sent until all were told", format!("{} in {:.1} s", report.sent, report.secs_until_all_told));
    row("server RSS before / peak", format!("{} / {} KiB", report.rss_before_kib, report.rss_peak_kib));
    row("server memory per stalled reader", format!("{:.0} KiB", report.kib_per_reader()));
    row(
        "peak bytes queued (all connections)",
        format!(
            "{} ({:.1} KiB per reader)",
            report.peak_queued_bytes,
            report.peak_queued_bytes as f64 / 1024.0 / report.readers as f64
        ),
    );
    row(
        "events read after the stall (per reader)",
        format!("{:.1}", report.events_before_notice as f64 / report.readers as f64),
    );
    row("in order, RESYNC_REQUIRED, close 1008", format!("{} of {}", report.told_and_closed, report.readers));
    ensure!(report.told_and_closed == report.readers, "some readers were not told as documented");
    Ok(())
}

async fn social(bench: &social_bench::SocialBench) -> anyhow::Result<()> {
    let bar = spinner("social");
    let report = social_bench::run(bench, |phase| bar.set_message(phase.to_owned())).await?;
    bar.finish_and_clear();
    println!(
        "social scenario against {}: {} users ({} stars), {} follows, {:.0} s of posts, likes and comments",
        bench.server, bench.users, bench.stars, report.follows, bench.duration_secs
    );
    println!("  {:<18} {:>7} {:>9} {:>9} {:>9} {:>9}", "phase", "count", "per s", "p50 ms", "p99 ms", "max ms");
    for p in &report.phases {
        println!(
            "  {:<18} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            p.name,
            p.count,
            p.count as f64 / p.secs,
            p.latency.ms(0.5),
            p.latency.ms(0.99),
            p.latency.max_ms()
        );
    }
    let l = &report.live;
    println!(
        "  {:<18} {:>7} {:>9} {:>9.1} {:>9.1} {:>9.1}",
        "post to live feeds",
        l.count(),
        "",
        l.ms(0.5),
        l.ms(0.99),
        l.max_ms()
    );
    if let Some(cpu) = report.server_cpu_secs {
        println!("  server CPU: {cpu:.1} s");
    }
    println!(
        "  oracle: {} feed entries checked, {} violations{}",
        report.feed_entries_checked,
        report.violations,
        if report.violations == 0 {
            " (every feed has every followed post once, in order; every count exact)"
        } else {
            ""
        }
    );
    for example in &report.examples {
        println!("    {example}");
    }
    ensure!(report.violations == 0, "the oracle found {} violations", report.violations);
    Ok(())
}

async fn media(bench: &media_bench::MediaBench) -> anyhow::Result<()> {
    let bar = spinner("images");
    let report = media_bench::run(bench, |phase, done, of| bar.set_message(format!("{phase} {done}/{of}"))).await?;
    bar.finish_and_clear();
    println!("images against {} ({} of each of {:?} MP)", bench.server, bench.images, bench.megapixels);
    println!(
        "  {:<34} {:>6} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "phase", "count", "per s", "MB/s", "p50 ms", "p99 ms", "server CPU"
    );
    for p in &report.phases {
        let cpu = p.server_cpu_secs.map_or("-".into(), |c| format!("{:.1} ms each", c * 1000.0 / p.count as f64));
        println!(
            "  {:<34} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>12}",
            p.name,
            p.count,
            p.count as f64 / p.secs,
            p.bytes as f64 / 1e6 / p.secs,
            p.latency.ms(0.5),
            p.latency.ms(0.99),
            cpu
        );
        if let (Some(peak), Some(before)) = (p.server_peak_rss_kib, report.rss_before_kib) {
            println!("  {:<34} {} MiB before, {} MiB at most", "  server memory", before / 1024, peak / 1024);
        }
    }
    println!("  vipsthumbnail on the same images (one process per row):");
    for v in &report.vips {
        println!(
            "  {:<34} {:>6} {:>9.1} {:>9} {:>9} {:>9} {:>12}",
            v.name,
            v.count,
            v.count as f64 / v.wall_secs,
            "",
            "",
            "",
            format!("{:.1} ms each", v.cpu_secs * 1000.0 / v.count as f64)
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    for server in &cli.servers {
        check_loopback(server)?;
    }
    let source_ips = if cli.source_ips > 1 {
        (1..=cli.source_ips).map(|i| IpAddr::from([127, 0, 0, i])).collect()
    } else {
        Vec::new()
    };
    let target = Target { servers: cli.servers.clone(), source_ips };
    if let Scenario::Shard { roster, behaviour, shard, shards } = &cli.scenario {
        let roster: Roster = serde_json::from_slice(&std::fs::read(roster)?)?;
        let behaviour: Behaviour = serde_json::from_str(behaviour)?;
        let progress = Arc::new(Progress::default());
        let result =
            swarm::run_shard(&roster, &target, &behaviour, *shard, *shards, Faults::default(), progress).await?;
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    let prefix = cli.prefix.clone().unwrap_or_else(|| {
        format!("s{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    });
    let session = Session {
        cli_servers: cli.servers.clone(),
        target,
        processes: cli.processes.max(1),
        server_pids: cli.server_pids.clone(),
        json_out: cli.json_out.clone(),
        plot_dir: cli.plot_dir.clone(),
    };
    let (name, plan, behaviour_args) = match &cli.scenario {
        Scenario::Idle { connections, settle_secs } => {
            return idle(&session, &prefix, *connections, *settle_secs).await;
        }
        Scenario::Push {
            tidings_bin,
            recipients,
            provider_delay_ms,
            apns_concurrency,
            fcm_concurrency,
            grace_ms,
            timeout_secs,
            backlog,
        } => {
            let bench = push_bench::PushBench {
                tidings_bin: tidings_bin.clone(),
                recipients: *recipients,
                provider_delay: Duration::from_millis(*provider_delay_ms),
                apns_concurrency: *apns_concurrency,
                fcm_concurrency: *fcm_concurrency,
                grace_ms: *grace_ms,
                timeout: Duration::from_secs(*timeout_secs),
                backlog: *backlog,
            };
            return push(&bench).await;
        }
        Scenario::Social {
            users,
            stars,
            star_share,
            follows_per_user,
            follow_back,
            posts_per_sec,
            likes_per_sec,
            comments_per_sec,
            duration_secs,
            drain_secs,
        } => {
            let bench = social_bench::SocialBench {
                server: cli.servers[0].clone(),
                server_pids: cli.server_pids.clone(),
                prefix: prefix.clone(),
                users: *users,
                stars: *stars,
                star_share: *star_share,
                follows_per_user: *follows_per_user,
                follow_back: *follow_back,
                posts_per_sec: *posts_per_sec,
                likes_per_sec: *likes_per_sec,
                comments_per_sec: *comments_per_sec,
                duration_secs: *duration_secs,
                drain_secs: *drain_secs,
            };
            return social(&bench).await;
        }
        Scenario::Media { images, megapixels, upload_concurrency, cached_requests, cached_concurrency } => {
            let bench = media_bench::MediaBench {
                server: session.cli_servers.first().context("--server names the server")?.clone(),
                server_pids: session.server_pids.clone(),
                prefix: prefix.clone(),
                images: *images,
                megapixels: megapixels.split(',').map(|m| m.trim().parse()).collect::<Result<_, _>>()?,
                upload_concurrency: *upload_concurrency,
                cached_requests: *cached_requests,
                cached_concurrency: *cached_concurrency,
            };
            return media(&bench).await;
        }
        Scenario::Stall { readers, body_bytes, messages_per_sec, timeout_secs } => {
            let bench = stall_bench::StallBench {
                server: session.cli_servers.first().context("--server names the server")?.clone(),
                server_pid: *session.server_pids.first().context("--server-pid: the server's memory is the point")?,
                prefix: prefix.clone(),
                readers: *readers,
                body_bytes: *body_bytes,
                messages_per_sec: *messages_per_sec,
                timeout: Duration::from_secs(*timeout_secs),
            };
            return stall(&bench).await;
        }
        Scenario::Direct { pairs, behaviour } => ("direct", scenario::direct(*pairs), behaviour.clone()),
        Scenario::Fanout { rooms, members, devices, behaviour } => {
            ("fanout", scenario::fanout(*rooms, *members, *devices), behaviour.clone())
        }
        Scenario::City { users, cities, celebrities, fans, behaviour } => {
            ("city", scenario::city(*users, *cities, *celebrities, *fans), behaviour.clone())
        }
        Scenario::MaxRate { rooms, members, behaviour, .. } => {
            ("max-rate", scenario::fanout(*rooms, *members, 1), behaviour.clone())
        }
        Scenario::Shard { .. } => unreachable!("handled above"),
    };
    let bar = spinner(&format!("setting up {} users and {} rooms", plan.users, plan.rooms.len()));
    let roster = swarm::setup(&session.target, &plan, &prefix, &Progress::default()).await?;
    bar.finish_and_clear();

    if let Scenario::MaxRate { start_rate, p99_bound_ms, max_steps, .. } = &cli.scenario {
        let mut rate = *start_rate;
        let mut best: Option<RunReport> = None;
        for phase in 0..*max_steps {
            let report = session.phase(name, &roster, behaviour_args.behaviour(phase, rate)).await?;
            let held = report.passed && report.delivery_ms.p99 <= *p99_bound_ms;
            if !held {
                println!(
                    "\n  rate {rate:.0} msg/s did not hold (p99 {:.1} ms, passed {})",
                    report.delivery_ms.p99, report.passed
                );
                break;
            }
            best = Some(report);
            rate *= 2.0;
        }
        match best {
            Some(b) => println!(
                "\nmax rate that held: {:.0} messages/s ({:.0} deliveries/s), p99 {:.1} ms",
                b.messages_per_sec, b.deliveries_per_sec, b.delivery_ms.p99
            ),
            None => bail!("even the starting rate did not hold"),
        }
        return Ok(());
    }
    let report = session.phase(name, &roster, behaviour_args.behaviour(0, behaviour_args.rate)).await?;
    ensure!(report.passed, "the run failed its correctness check");
    Ok(())
}
