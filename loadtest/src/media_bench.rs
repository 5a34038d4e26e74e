//! The image benchmark: uploads, variants made, cached variants served, against a running server;
//! and the same thumbnails made by `vipsthumbnail` (libvips) on the same images, in the same run.
//!
//! Images are made here: photo-like JPEGs (smooth shapes, fine grain) of 1 and 4 megapixels, each
//! different. Variants are 320 px boxes, as JPEG and as WebP; the server's CPU per variant comes
//! from its process's CPU time over the variant phase (so it is end to end: HTTP, reading the
//! stored chunks, decoding, resizing, encoding, the cache), libvips' from its process's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::StreamExt;

use crate::procfs::{cpu_secs, rss_kib};
use crate::stats::Latency;

pub struct MediaBench {
    pub server: String,
    pub server_pids: Vec<u32>,
    pub prefix: String,
    /// Images of each size.
    pub images: usize,
    /// Image sizes, in megapixels.
    pub megapixels: Vec<u32>,
    pub upload_concurrency: usize,
    pub cached_requests: usize,
    pub cached_concurrency: usize,
}

/// One phase's figures.
pub struct Phase {
    pub name: String,
    pub count: usize,
    pub secs: f64,
    pub bytes: u64,
    pub latency: Latency,
    pub server_cpu_secs: Option<f64>,
    pub server_peak_rss_kib: Option<u64>,
}

/// libvips on the same images.
pub struct Vips {
    pub name: String,
    pub count: usize,
    pub cpu_secs: f64,
    pub wall_secs: f64,
}

pub struct MediaReport {
    pub phases: Vec<Phase>,
    pub vips: Vec<Vips>,
    pub rss_before_kib: Option<u64>,
}

/// A photo-like JPEG: smooth colour fields, a few shapes and a fine grain (so that it compresses as
/// a photo does, not as a flat gradient).
pub fn photo(megapixels: u32, seed: u32) -> Vec<u8> {
    let pixels = megapixels as f64 * 1_000_000.0;
    let width = (pixels * 4.0 / 3.0).sqrt() as u32;
    let height = (pixels / width as f64) as u32;
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut grain = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 17) as i32 - 8
    };
    let s = seed as f32;
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        let sky = (fy * 3.0 + s).sin() * 60.0 + 120.0;
        let hill = ((fx * 7.0 + s * 0.3).sin() * 0.15 + 0.6 < fy) as u8 as f32 * 70.0;
        let sun = (((fx - 0.7).powi(2) + (fy - 0.25).powi(2)).sqrt() < 0.08) as u8 as f32 * 90.0;
        let g = grain();
        let c = |v: f32| (v as i32 + g).clamp(0, 255) as u8;
        image::Rgb([c(sky + sun), c(sky * 0.8 + hill), c(200.0 - hill + sun * 0.3)])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode(image.as_raw(), width, height, image::ExtendedColorType::Rgb8)
        .expect("encoding in memory");
    out
}

pub async fn run(bench: &MediaBench, progress: impl Fn(&str, usize, usize)) -> anyhow::Result<MediaReport> {
    let base = format!("http://{}", bench.server);
    let http = tidings_client::Http::new(base.clone());
    let auth = http.sign_up(&format!("{}_m", bench.prefix), "correct horse battery", "bench").await?;
    let client = reqwest::Client::new();
    let token = auth.access_token;
    let mut images: Vec<(u32, Vec<u8>)> = Vec::new();
    for &mp in &bench.megapixels {
        for i in 0..bench.images {
            progress("making images", images.len(), bench.images * bench.megapixels.len());
            images.push((mp, photo(mp, i as u32 + 1 + mp * 1000)));
        }
    }
    let rss_before_kib = rss_kib(&bench.server_pids).ok();
    let mut phases = Vec::new();

    // Uploads, a few at once, with the server's memory sampled meanwhile.
    let total = images.len();
    let started = Instant::now();
    let cpu_before = cpu_secs(&bench.server_pids);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampling = tokio::spawn(peak_rss(bench.server_pids.clone(), stop.clone()));
    let uploads: Vec<anyhow::Result<(u32, String, u64)>> = futures_util::stream::iter(images.iter().cloned())
        .map(|(mp, data)| {
            let (client, base, token) = (client.clone(), base.clone(), token.clone());
            async move {
                let sent = Instant::now();
                let answer = client
                    .post(format!("{base}/v1/media"))
                    .bearer_auth(&token)
                    .header("content-type", "image/jpeg")
                    .body(data)
                    .send()
                    .await?;
                ensure!(answer.status().as_u16() == 201, "upload answered {}", answer.status());
                let info: serde_json::Value = answer.json().await?;
                let id = info["mediaId"].as_str().context("no mediaId")?.to_owned();
                Ok((mp, id, sent.elapsed().as_micros() as u64))
            }
        })
        .buffer_unordered(bench.upload_concurrency.max(1))
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Release);
    let peak = sampling.await.ok().flatten();
    let mut latency = Latency::default();
    let mut stored = Vec::new();
    for upload in uploads {
        let (mp, id, micros) = upload?;
        latency.record_micros(micros);
        stored.push((mp, id));
    }
    let bytes = images.iter().map(|(_, d)| d.len() as u64).sum();
    let cpu = cpu_secs(&bench.server_pids).zip(cpu_before).map(|(a, b)| a - b);
    phases.push(Phase {
        name: "uploads".into(),
        count: total,
        secs,
        bytes,
        latency,
        server_cpu_secs: cpu,
        server_peak_rss_kib: peak,
    });

    // Variants made: one at a time, so that the server's CPU over the phase is theirs.
    for format in ["jpeg", "webp"] {
        for &mp in &bench.megapixels {
            let ids: Vec<&String> = stored.iter().filter(|(m, _)| *m == mp).map(|(_, id)| id).collect();
            let query = format!("w=320&h=320&format={format}");
            let phase =
                timed_gets(&client, &base, &token, &ids, &query, 1, ids.len(), &bench.server_pids, "MISS").await?;
            progress("variants", 0, 0);
            phases.push(Phase { name: format!("{format} 320 px from {mp} MP (made)"), ..phase });
        }
    }
    // Cached variants, many at once.
    let ids: Vec<&String> = stored.iter().map(|(_, id)| id).collect();
    let cached = timed_gets(
        &client,
        &base,
        &token,
        &ids,
        "w=320&h=320&format=jpeg",
        bench.cached_concurrency,
        bench.cached_requests,
        &bench.server_pids,
        "HIT",
    )
    .await?;
    phases.push(Phase { name: "jpeg 320 px (cached)".into(), ..cached });

    let vips = run_vips(&images).await?;
    Ok(MediaReport { phases, vips, rss_before_kib })
}

/// `requests` GETs of `?query` over `ids` (round robin), `concurrency` at once; each answer must
/// say `X-Cache: expect`.
#[allow(clippy::too_many_arguments)]
async fn timed_gets(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    ids: &[&String],
    query: &str,
    concurrency: usize,
    requests: usize,
    pids: &[u32],
    expect: &str,
) -> anyhow::Result<Phase> {
    let cpu_before = cpu_secs(pids);
    let started = Instant::now();
    let results: Vec<anyhow::Result<(u64, u64)>> = futures_util::stream::iter(0..requests)
        .map(|i| {
            let url = format!("{base}/v1/media/{}?{query}", ids[i % ids.len()]);
            let (client, token) = (client.clone(), token.to_owned());
            async move {
                let sent = Instant::now();
                let answer = client.get(url).bearer_auth(&token).send().await?;
                ensure!(answer.status().as_u16() == 200, "variant answered {}", answer.status());
                let cache = answer.headers().get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                ensure!(cache == expect, "expected X-Cache {expect}, got {cache:?}");
                let body = answer.bytes().await?;
                Ok((sent.elapsed().as_micros() as u64, body.len() as u64))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let mut latency = Latency::default();
    let mut bytes = 0;
    for result in results {
        let (micros, size) = result?;
        latency.record_micros(micros);
        bytes += size;
    }
    let cpu = cpu_secs(pids).zip(cpu_before).map(|(a, b)| a - b);
    Ok(Phase {
        name: String::new(),
        count: requests,
        secs,
        bytes,
        latency,
        server_cpu_secs: cpu,
        server_peak_rss_kib: None,
    })
}

/// The servers' resident memory at its highest, sampled every 20 ms until `stop`.
async fn peak_rss(pids: Vec<u32>, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Option<u64> {
    let mut peak = None;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        if let Ok(now) = rss_kib(&pids) {
            peak = Some(peak.unwrap_or(0).max(now));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peak
}

/// `vipsthumbnail` on the same images: 320x320 boxes as JPEG (Q 80) and WebP (Q 80), one process
/// per format and size (its start-up is shared by every image).
async fn run_vips(images: &[(u32, Vec<u8>)]) -> anyhow::Result<Vec<Vips>> {
    let dir = std::env::temp_dir().join(format!("tidings-media-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut files: Vec<(u32, PathBuf)> = Vec::new();
    for (i, (mp, data)) in images.iter().enumerate() {
        let path = dir.join(format!("img{i}-{mp}mp.jpg"));
        std::fs::write(&path, data)?;
        files.push((*mp, path));
    }
    let mut sizes: Vec<u32> = images.iter().map(|(mp, _)| *mp).collect();
    sizes.dedup();
    let mut results = Vec::new();
    for format in ["jpg", "webp"] {
        for &mp in &sizes {
            let inputs: Vec<&Path> = files.iter().filter(|(m, _)| *m == mp).map(|(_, p)| p.as_path()).collect();
            let (cpu, wall) = children_cpu(|| {
                std::process::Command::new("vipsthumbnail")
                    .args(["--size", "320x320", "-o"])
                    .arg(format!("{}/%s-thumb.{format}[Q=80]", dir.display()))
                    .args(&inputs)
                    .status()
            })?;
            let name = match format {
                "jpg" => format!("jpeg 320 px from {mp} MP"),
                _ => format!("webp 320 px from {mp} MP"),
            };
            results.push(Vips { name, count: inputs.len(), cpu_secs: cpu, wall_secs: wall });
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(results)
}

/// Runs a child process to its end: the CPU seconds its process used, and the wall time.
fn children_cpu(run: impl FnOnce() -> std::io::Result<std::process::ExitStatus>) -> anyhow::Result<(f64, f64)> {
    let before = own_children_cpu()?;
    let started = Instant::now();
    let status = run().context("running vipsthumbnail (Debian: apt install libvips-tools)")?;
    if !status.success() {
        bail!("vipsthumbnail failed: {status}");
    }
    Ok((own_children_cpu()? - before, started.elapsed().as_secs_f64()))
}

/// CPU seconds of this process's waited-for children (cutime + cstime in /proc/self/stat).
fn own_children_cpu() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let rest = stat.rsplit_once(')').context("bad /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields.get(13).context("no cutime")?.parse::<u64>()? + fields.get(14).context("no cstime")?.parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}
