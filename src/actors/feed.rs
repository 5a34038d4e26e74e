//! Feed actors: one per author whose posts are being fanned out on this node, the single writer of
//! that author's fan-outs, one post after another in the order they came.
//!
//! A post's fan-out is a durable job in the store (written with the post: `PostStore::create_post`)
//! that records how far it got. The actor takes the author's followers a page at a time (in id
//! order), writes the post into each one's home feed and moves the job past the page in one step
//! (`FeedStore::fan_out_page`), so a fan-out cut short by a crash is resumed where it stopped and
//! writes each feed entry once. No job per follower: one per post.
//!
//! An author with more than `feed.fanout_max_followers` followers is wide: their posts are written
//! once and merged into followers' feeds when read (`services::posts`), not fanned out; its
//! online followers, found among the users online here and on the other nodes (O(online users),
//! not O(followers)), get its event in their streams.
//!
//! `feed_sweep` resumes jobs nobody is running: at start and every `SWEEP_EVERY`, the pending
//! jobs of authors this node owns, once they are older than `STALE_AFTER` (the node that took the
//! post runs its job at once; the sweep is for jobs a crash left).

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::mpsc;

use super::Hub;
use crate::domain::{ActorKey, FollowList, PostId, StreamEvent, UserId, now_ms};
use crate::lifecycle::Periodic;
use crate::metrics::METRICS;
use crate::store::{FanoutJob, StoreResult};

/// Followers taken at once.
const PAGE: usize = 1000;
/// An actor with nothing to do for this long stops.
const IDLE: Duration = Duration::from_secs(30);
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// A job older than this that no actor here runs is resumed by the sweep.
const STALE_AFTER_MS: i64 = 30_000;

/// The feed actors of this node.
pub struct Feeds {
    actors: DashMap<UserId, (u64, mpsc::UnboundedSender<PostId>)>,
    /// Posts queued or being fanned out here.
    in_flight: DashMap<PostId, ()>,
    fanout_max_followers: u64,
}

impl Feeds {
    pub fn new(fanout_max_followers: u64) -> Self {
        Self { actors: DashMap::new(), in_flight: DashMap::new(), fanout_max_followers }
    }

    /// Hands a post's fan-out to its author's actor (started if needed), unless it is queued here
    /// already.
    pub fn fan_out(&self, hub: &Arc<Hub>, author: UserId, post: PostId) {
        if self.in_flight.insert(post, ()).is_some() {
            return;
        }
        let mut entry = self.actors.entry(author).or_insert_with(|| start(hub.clone(), author));
        if entry.1.send(post).is_err() {
            // It stopped: a fresh one takes the post.
            *entry = start(hub.clone(), author);
            let _ = entry.1.send(post);
        }
    }
}

fn start(hub: Arc<Hub>, author: UserId) -> (u64, mpsc::UnboundedSender<PostId>) {
    let (sender, posts) = mpsc::unbounded_channel();
    let id = rand::random::<u64>();
    actix::spawn(run(hub, author, id, posts));
    (id, sender)
}

/// The actor: the author's posts' fan-outs, one at a time, until idle.
async fn run(hub: Arc<Hub>, author: UserId, id: u64, mut posts: mpsc::UnboundedReceiver<PostId>) {
    loop {
        match tokio::time::timeout(IDLE, posts.recv()).await {
            Ok(Some(post)) => fan_out(&hub, post).await,
            Ok(None) => return,
            Err(_) => {
                // Leave the map first: a post handed over after this starts a fresh actor.
                hub.feeds.actors.remove_if(&author, |_, (actor, _)| *actor == id);
                posts.close();
                while let Ok(post) = posts.try_recv() {
                    fan_out(&hub, post).await;
                }
                return;
            }
        }
    }
}

/// One post's fan-out, from where its job stands; a failure leaves the job for the sweep.
async fn fan_out(hub: &Arc<Hub>, post: PostId) {
    let began = std::time::Instant::now();
    match run_job(hub, post).await {
        Ok(Some(followers)) => {
            METRICS.feed_fanouts_total.inc();
            tracing::debug!(%post, followers, took_ms = began.elapsed().as_millis() as u64, "post fanned out");
        }
        Ok(None) => {}
        Err(e) => {
            METRICS.feed_fanouts_failed_total.inc();
            tracing::warn!(%post, error = %e, "fanning out a post failed; the sweep resumes it");
        }
    }
    hub.feeds.in_flight.remove(&post);
}

/// The followers the post reached, or `None` when its job was done already.
async fn run_job(hub: &Hub, post: PostId) -> StoreResult<Option<u64>> {
    let store = &hub.store;
    let Some(mut job) = store.fanout_job(post).await? else { return Ok(None) };
    let followers = store.follow_counts(vec![job.author]).await?.first().map_or(0, |(_, c)| c.followers);
    let wide = followers > hub.feeds.fanout_max_followers || store.wide_authors().await?.contains(&job.author);
    if wide {
        // Written once: followers' feeds merge it when read.
        store.add_wide_author(job.author).await?;
    }
    let details = store.post(post).await?.map(Arc::new);
    let event = StreamEvent::Post { post, author: job.author, details };
    if wide {
        // Nothing to write per follower: only the online ones get an event, found among who is
        // online (O(online users)), not by walking the followers (O(followers)).
        let online = online_users(hub).await;
        let mut reached = 0u64;
        for candidates in online.chunks(PAGE) {
            let live = store.followers_among(job.author, candidates.to_vec()).await?;
            if live.is_empty() {
                continue;
            }
            let positions = store.fan_out_page(job, &[], false, &live).await?;
            hub.deliver(&positions, &event);
            reached += live.len() as u64;
        }
        store.finish_fanout(post).await?;
        return Ok(Some(reached));
    }
    let mut reached = 0u64;
    loop {
        let page = store.follow_list(job.author, FollowList::Followers, job.after, PAGE).await?;
        if page.is_empty() {
            break;
        }
        let live = online(hub, &page).await;
        let positions = store.fan_out_page(job, &page, !wide, &live).await?;
        if !positions.is_empty() {
            hub.deliver(&positions, &event);
        }
        reached += page.len() as u64;
        job = FanoutJob { after: page.last().copied(), ..job };
        if page.len() < PAGE {
            break;
        }
    }
    store.finish_fanout(post).await?;
    Ok(Some(reached))
}

/// Every user with a live session: here, and (in a cluster) on the other nodes.
async fn online_users(hub: &Hub) -> Vec<UserId> {
    let mut users = hub.registry.online_users();
    if let Some(peers) = &hub.peers {
        users.extend(peers.online_users_elsewhere().await);
        users.sort_unstable();
        users.dedup();
    }
    users
}

/// Those of `users` with a live session: here, or (in a cluster) on another node.
async fn online(hub: &Hub, users: &[UserId]) -> Vec<UserId> {
    let (mut live, elsewhere): (Vec<UserId>, Vec<UserId>) = users.iter().partition(|u| hub.registry.is_online(**u));
    if let Some(peers) = &hub.peers {
        let there = futures_util::future::join_all(elsewhere.iter().map(|&u| peers.online_elsewhere(u))).await;
        live.extend(elsewhere.into_iter().zip(there).filter_map(|(u, online)| online.then_some(u)));
    }
    live
}

/// Resumes fan-outs a crash left: see the module's notes.
pub fn feed_sweep(hub: Arc<Hub>) -> Periodic {
    Periodic::start("feed sweep", Duration::ZERO, SWEEP_EVERY, move || {
        let hub = hub.clone();
        async move {
            let jobs = match hub.store.pending_fanouts(PAGE).await {
                Ok(jobs) => jobs,
                Err(e) => return tracing::warn!(error = %e, "listing pending fan-outs failed; trying again later"),
            };
            let now = now_ms();
            for job in jobs {
                let (owned, stale) = match &hub.peers {
                    Some(peers) => (peers.owns(ActorKey::Feed(job.author)), now - job.started_at_ms > STALE_AFTER_MS),
                    // Alone, nothing else runs it: a pending job not in flight here was cut short.
                    None => (true, true),
                };
                if owned && stale {
                    hub.feeds.fan_out(&hub, job.author, job.post);
                }
            }
        }
    })
}
