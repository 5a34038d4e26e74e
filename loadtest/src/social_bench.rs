//! The social scenario, in the spirit of vangav's city bots: users join and post a photo each;
//! each follows a few others and every star, and some follow back; then posts (a share of them by
//! the stars), likes and comments go at fixed rates while every user's stream is read live.
//!
//! Its oracle, at the end: every user's home feed, read page by page to its end, holds every post
//! of everyone they follow (and their own) exactly once, newest first, and nothing else; and every
//! post's like and comment counts are exactly what the swarm did. It reports each phase's rate and
//! latency, how long a post took to reach its online followers' streams, and the feed reads.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures_util::StreamExt;
use tidings_client::tidings_proto::Encoding;
use tidings_client::tidings_proto::v1::{self as wire, client_frame::Request as Req, reply::Result as Answer};
use tidings_client::{Connection, Incoming};
use tokio::sync::Semaphore;

use crate::procfs::cpu_secs;
use crate::stats::Latency;

pub struct SocialBench {
    pub server: String,
    pub server_pids: Vec<u32>,
    pub prefix: String,
    pub users: usize,
    /// The first `stars` users: everyone follows them, and they post `star_share` of the posts.
    pub stars: usize,
    pub star_share: f64,
    /// Others each user follows (besides the stars).
    pub follows_per_user: usize,
    /// The chance that a user followed by someone follows them back.
    pub follow_back: f64,
    pub posts_per_sec: f64,
    pub likes_per_sec: f64,
    pub comments_per_sec: f64,
    pub duration_secs: f64,
    /// How long the oracle waits at most for the last fan-outs.
    pub drain_secs: f64,
}

/// One phase's figures.
pub struct Phase {
    pub name: &'static str,
    pub count: usize,
    pub secs: f64,
    pub latency: Latency,
}

pub struct SocialReport {
    pub phases: Vec<Phase>,
    pub follows: usize,
    /// From a post's creation (the server's clock) to its event in a live follower's stream.
    pub live: Latency,
    pub feed_entries_checked: usize,
    pub violations: usize,
    /// The first few violations, described.
    pub examples: Vec<String>,
    pub server_cpu_secs: Option<f64>,
}

/// A small deterministic generator (xorshift): runs are repeatable, and no dependency is needed.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1_000_000.0 < p
    }
}

/// A tiny JPEG, different per seed: a post needs a photo, and the scenario is not about images.
fn small_photo(seed: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(48, 48, |x, y| {
        image::Rgb([(x * 5 + seed) as u8, (y * 5) as u8, (seed.wrapping_mul(31)) as u8])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode(image.as_raw(), 48, 48, image::ExtendedColorType::Rgb8)
        .expect("encoding in memory");
    out
}

struct User {
    id: u64,
    token: String,
    conn: Connection,
    photo: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Runs `jobs` at most `at_once` at a time, timing each; fails on the first error.
async fn timed<F, Fut>(name: &'static str, jobs: usize, at_once: usize, job: F) -> anyhow::Result<Phase>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let results: Vec<anyhow::Result<u64>> = futures_util::stream::iter(0..jobs)
        .map(|i| {
            let fut = job(i);
            async move {
                let sent = Instant::now();
                fut.await?;
                Ok(sent.elapsed().as_micros() as u64)
            }
        })
        .buffer_unordered(at_once.max(1))
        .collect()
        .await;
    let mut latency = Latency::default();
    for r in results {
        latency.record_micros(r.with_context(|| format!("during {name}"))?);
    }
    Ok(Phase { name, count: jobs, secs: started.elapsed().as_secs_f64(), latency })
}

pub async fn run(bench: &SocialBench, progress: impl Fn(&str)) -> anyhow::Result<SocialReport> {
    ensure!(bench.users >= 2 && bench.stars < bench.users, "need at least 2 users, and fewer stars than users");
    let base = format!("http://{}", bench.server);
    let ws_base = format!("ws://{}", bench.server);
    let http = tidings_client::Http::new(base.clone());
    let client = reqwest::Client::new();
    let cpu_before = cpu_secs(&bench.server_pids);
    let mut phases = Vec::new();

    // Users join: an account, a connection for requests, a photo.
    progress("users join");
    let joined: Vec<anyhow::Result<(u64, String)>> = futures_util::stream::iter(0..bench.users)
        .map(|i| {
            let http = &http;
            async move {
                let auth = http.sign_up(&format!("{}_{i}", bench.prefix), "correct horse battery", "bot").await?;
                Ok((auth.user_id, auth.access_token))
            }
        })
        .buffered(16)
        .collect()
        .await;
    let mut users = Vec::new();
    for (i, user) in joined.into_iter().enumerate() {
        let (id, token) = user?;
        let conn = Connection::connect(&ws_base, &token, Encoding::Protobuf).await?;
        let answer = client
            .post(format!("{base}/v1/media"))
            .bearer_auth(&token)
            .header("content-type", "image/jpeg")
            .body(small_photo(i as u32))
            .send()
            .await?;
        ensure!(answer.status().as_u16() == 201, "upload answered {}", answer.status());
        let info: serde_json::Value = answer.json().await?;
        let photo = info["mediaId"].as_str().context("no mediaId")?.to_owned();
        users.push(User { id, token, conn, photo });
    }
    let users = Arc::new(users);

    // Each user's stream, read live on a second connection: post events timed on arrival.
    let live = Arc::new(Mutex::new(Latency::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for user in users.iter() {
        let mut conn = Connection::connect(&ws_base, &user.token, Encoding::Protobuf).await?;
        conn.sync(0).await?;
        let (live, stop) = (live.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                match conn.next_within(Duration::from_millis(200)).await {
                    Ok(Incoming::Event(wire::Event { kind: Some(wire::event::Kind::Post(p)), .. })) => {
                        if let Some(post) = p.post {
                            let took = (now_ms() - post.created_at_ms).max(0) as u64;
                            live.lock().unwrap_or_else(|e| e.into_inner()).record_micros(took * 1000);
                        }
                    }
                    Ok(_) | Err(tidings_client::ClientError::Timeout) => {}
                    Err(_) => return,
                }
            }
        }));
    }

    // The graph: a few others each, every star, and follow-backs.
    progress("following");
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
    let mut edges: Vec<(usize, usize)> = Vec::new();
    let mut follows: HashSet<(usize, usize)> = HashSet::new();
    for u in 0..bench.users {
        let mut targets: Vec<usize> = (0..bench.stars).filter(|&s| s != u).collect();
        while targets.len() < (bench.stars + bench.follows_per_user).min(bench.users - 1) {
            let v = dice.below(bench.users);
            if v != u && !targets.contains(&v) {
                targets.push(v);
            }
        }
        for v in targets {
            if follows.insert((u, v)) {
                edges.push((u, v));
            }
            if v >= bench.stars && dice.chance(bench.follow_back) && follows.insert((v, u)) {
                edges.push((v, u));
            }
        }
    }
    let edges = Arc::new(edges);
    let phase = timed("follows", edges.len(), 32, |i| {
        let (users, edges) = (users.clone(), edges.clone());
        async move {
            let (u, v) = edges[i];
            let answer = users[u].conn.request(Req::Follow(wire::FollowRequest { user_id: users[v].id })).await?;
            ensure!(matches!(answer, Answer::Follow(_)), "a follow answered {answer:?}");
            Ok(())
        }
    })
    .await?;
    phases.push(phase);

    // Posts, likes and comments at fixed rates, for the duration.
    progress("posting, liking, commenting");
    let posts: Arc<Mutex<Vec<(u64, usize)>>> = Arc::new(Mutex::new(Vec::new()));
    let likes: Arc<Mutex<HashSet<(u64, usize)>>> = Arc::new(Mutex::new(HashSet::new()));
    let comments: Arc<Mutex<HashMap<u64, u64>>> = Arc::new(Mutex::new(HashMap::new()));
    let latencies: Arc<Mutex<[Latency; 3]>> = Arc::new(Mutex::new(Default::default()));
    let follows = Arc::new(follows);
    let rate = bench.posts_per_sec + bench.likes_per_sec + bench.comments_per_sec;
    ensure!(rate > 0.0, "nothing to do: every rate is 0");
    let total = (rate * bench.duration_secs) as usize;
    let in_flight = Arc::new(Semaphore::new(64));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut counts = [0usize; 3];
    for n in 0..total {
        let due = started + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let roll = (dice.next() % 1_000_000) as f64 / 1_000_000.0 * rate;
        let kind = if roll < bench.posts_per_sec {
            0
        } else if roll < bench.posts_per_sec + bench.likes_per_sec {
            1
        } else {
            2
        };
        let actor = if kind == 0 && bench.stars > 0 && dice.chance(bench.star_share) {
            dice.below(bench.stars)
        } else {
            dice.below(bench.users)
        };
        // A like or comment goes to a recent post its actor may see (their own, or a followed author's).
        let target = if kind == 0 {
            None
        } else {
            let known = posts.lock().unwrap_or_else(|e| e.into_inner());
            let recent = &known[known.len().saturating_sub(200)..];
            (0..8)
                .map(|_| recent.get(dice.below(recent.len())).copied())
                .find_map(|p| p.filter(|&(_, author)| author == actor || follows.contains(&(actor, author))))
        };
        if kind != 0 && target.is_none() {
            continue;
        }
        counts[kind] += 1;
        let permit = in_flight.clone().acquire_owned().await?;
        let (users, posts, likes, comments, latencies) =
            (users.clone(), posts.clone(), likes.clone(), comments.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let conn = &users[actor].conn;
            let sent = Instant::now();
            match (kind, target) {
                (0, _) => {
                    let request = wire::CreatePostRequest {
                        client_post_id: format!("p{n}"),
                        media_ids: vec![users[actor].photo.clone()],
                        caption: format!("post {n}"),
                        location: None,
                    };
                    let Answer::Post(post) = conn.request(Req::CreatePost(request)).await? else {
                        anyhow::bail!("a post was not answered with the post")
                    };
                    posts.lock().unwrap_or_else(|e| e.into_inner()).push((post.post_id, actor));
                }
                (1, Some((post_id, _))) => {
                    conn.request(Req::LikePost(wire::LikePostRequest { post_id })).await?;
                    likes.lock().unwrap_or_else(|e| e.into_inner()).insert((post_id, actor));
                }
                (_, Some((post_id, _))) => {
                    let text = format!("comment {n}");
                    let request = wire::CommentRequest { post_id, client_comment_id: format!("c{n}"), text };
                    conn.request(Req::Comment(request)).await?;
                    *comments.lock().unwrap_or_else(|e| e.into_inner()).entry(post_id).or_default() += 1;
                }
                _ => unreachable!("likes and comments have a target"),
            }
            latencies.lock().unwrap_or_else(|e| e.into_inner())[kind].record_micros(sent.elapsed().as_micros() as u64);
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let latencies = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (i, name) in ["posts", "likes", "comments"].into_iter().enumerate() {
        phases.push(Phase { name, count: counts[i], secs, latency: latencies[i].clone() });
    }

    // The oracle: every feed, to its end, against what the swarm did; every post's counts.
    progress("checking every feed");
    let posts = posts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut expected: Vec<Vec<u64>> = vec![Vec::new(); bench.users];
    for &(post, author) in &posts {
        for (u, feed) in expected.iter_mut().enumerate() {
            if u == author || follows.contains(&(u, author)) {
                feed.push(post);
            }
        }
    }
    for feed in &mut expected {
        feed.sort_unstable_by(|a, b| b.cmp(a));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(bench.drain_secs);
    let mut reads = Latency::default();
    let mut pages = 0usize;
    let read_started = Instant::now();
    let mut violations: Vec<String> = Vec::new();
    let mut checked = 0usize;
    for (u, want) in expected.iter().enumerate() {
        loop {
            let (got, page_latencies) = read_feed(&users[u].conn).await?;
            let problems = compare(&got, want);
            if problems.is_empty() || Instant::now() > deadline {
                for micros in page_latencies {
                    reads.record_micros(micros);
                    pages += 1;
                }
                checked += got.len();
                violations.extend(problems.into_iter().map(|p| format!("user {} ({}): {p}", u, users[u].id)));
                break;
            }
            // A fan-out may still be on its way: read again, until the drain deadline.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let read_secs = read_started.elapsed().as_secs_f64();
    let likes = likes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let comments = comments.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for &(post_id, author) in &posts {
        let Answer::Post(post) = users[author].conn.request(Req::GetPost(wire::GetPostRequest { post_id })).await?
        else {
            anyhow::bail!("getPost answered something else")
        };
        let want_likes = likes.iter().filter(|(p, _)| *p == post_id).count() as u64;
        let want_comments = comments.get(&post_id).copied().unwrap_or(0);
        if (post.likes, post.comments) != (want_likes, want_comments) {
            violations.push(format!(
                "post {post_id}: {} likes and {} comments, the swarm made {want_likes} and {want_comments}",
                post.likes, post.comments
            ));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    for reader in readers {
        let _ = reader.await;
    }
    phases.push(Phase { name: "feed pages read", count: pages, secs: read_secs, latency: reads });
    let live = live.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let server_cpu_secs = cpu_secs(&bench.server_pids).zip(cpu_before).map(|(a, b)| a - b);
    let count = violations.len();
    violations.truncate(10);
    Ok(SocialReport {
        phases,
        follows: edges.len(),
        live,
        feed_entries_checked: checked,
        violations: count,
        examples: violations,
        server_cpu_secs,
    })
}

/// A user's whole home feed, page by page, with each page's read time.
async fn read_feed(conn: &Connection) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let (mut ids, mut times, mut cursor) = (Vec::new(), Vec::new(), String::new());
    for _ in 0..10_000 {
        let sent = Instant::now();
        let Answer::Posts(page) =
            conn.request(Req::Feed(wire::FeedRequest { cursor: cursor.clone(), limit: 20 })).await?
        else {
            anyhow::bail!("feed answered something else")
        };
        times.push(sent.elapsed().as_micros() as u64);
        ids.extend(page.posts.iter().map(|p| p.post_id));
        if page.next_cursor.is_empty() {
            return Ok((ids, times));
        }
        cursor = page.next_cursor;
    }
    anyhow::bail!("a feed of more than 10,000 pages")
}

/// What is wrong with a feed read against the one expected (both newest first).
fn compare(got: &[u64], want: &[u64]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for pair in got.windows(2) {
        if pair[0] <= pair[1] {
            problems.push(format!("out of order: {} before {}", pair[0], pair[1]));
        }
    }
    for id in got {
        if !seen.insert(*id) {
            problems.push(format!("post {id} twice"));
        }
    }
    let wanted: HashSet<u64> = want.iter().copied().collect();
    for id in want.iter().filter(|id| !seen.contains(id)) {
        problems.push(format!("post {id} missing"));
    }
    for id in got.iter().filter(|id| !wanted.contains(id)) {
        problems.push(format!("post {id} not from anyone followed"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oracle_names_each_kind_of_fault() {
        assert!(compare(&[5, 3, 1], &[5, 3, 1]).is_empty());
        let problems = compare(&[3, 5, 5, 9], &[5, 3, 1]);
        let text = problems.join("; ");
        for expected in
            ["out of order: 3 before 5", "post 5 twice", "post 1 missing", "post 9 not from anyone followed"]
        {
            assert!(text.contains(expected), "{text}");
        }
    }
}
