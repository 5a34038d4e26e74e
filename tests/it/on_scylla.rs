//! The protocol tests that exercise the store, again with every server on the ScyllaDB store (a
//! keyspace per server on the CQL node `TIDINGS_SCYLLA_NODES` names): the server passes the same
//! tests on either backend. Without a CQL node they say they were skipped.

/// `on_scylla::module::test` runs `module::test` again, on ScyllaDB (with `$run`: `on_scylla`,
/// or `on_scylla_after_ack`).
macro_rules! on_scylla {
    ($run:ident; $($module:ident: [$($test:ident),* $(,)?];)*) => {
        $(
            mod $module {
                $(
                    #[test]
                    fn $test() {
                        crate::harness::$run(crate::$module::$test);
                    }
                )*
            }
        )*
    };
}

on_scylla! {
    on_scylla;
    media: [
        each_format_round_trips,
        exif_orientation_is_applied_and_exif_removed,
        bad_uploads_get_typed_errors_and_leave_nothing,
        conditional_and_range_reads,
        variants_have_the_right_size_and_are_made_once,
        chat_images_are_readable_by_the_rooms_members_only,
        signed_urls_read_one_image_until_they_expire,
        images_never_sent_are_collected,
    ];
    activity: [
        follows_likes_and_comments_reach_the_owner_grouped_once_and_resume_like_chat,
        a_private_account_is_asked_and_the_asker_told_when_it_approves,
        turning_public_approves_whoever_asked_and_tells_them,
    ];
    feeds: [
        posts_reach_followers_feeds_newest_first_in_pages,
        a_wide_authors_posts_are_merged_into_feeds_when_read,
        a_fan_out_cut_short_by_a_crash_resumes_and_writes_each_entry_once,
        online_followers_get_the_post_in_their_stream_offline_ones_in_their_feed,
    ];
    follows: [
        public_and_private_accounts_are_followed_as_their_owners_chose,
        a_block_ends_follows_both_ways_and_hides_the_blocker,
        counts_stay_exact_while_many_follow_and_unfollow_at_once,
        a_block_stops_messages_in_an_existing_direct_room_both_ways,
    ];
    posts: [
        posts_are_made_once_read_listed_and_deleted,
        bad_posts_are_refused_naming_their_field,
        a_private_authors_posts_and_photos_are_for_followers_a_blockers_for_no_one,
        likes_and_comments_are_counted_and_follow_the_posts_visibility,
    ];
    profiles: [
        profiles_are_set_read_and_found_by_name,
        bad_profile_changes_are_refused_naming_their_field,
        an_avatar_is_readable_by_anyone_and_cached_publicly_a_chat_image_is_not,
    ];
    app_tokens: [app_users_are_created_on_first_connect_and_chat_with_each_algorithm];
    server_api: [
        presence_of_tidings_and_app_users,
        devices_are_listed_revoked_and_disconnected,
        a_blocked_account_is_disconnected_and_kept_out_until_unblocked,
        system_messages_reach_every_member_once_per_key,
    ];
    notify: [
        a_notification_is_shown_live_resumed_pushed_offline_and_never_twice,
        an_ack_within_the_grace_window_cancels_the_push_and_push_false_sends_none,
    ];
    admin: [the_push_queue_shows_queued_and_failed_pushes_to_drop_or_retry];
    push: [
        offline_recipient_gets_exactly_one_push_with_the_right_payload,
        ack_within_the_grace_window_cancels_the_push,
        reading_on_another_device_cancels_the_push,
        a_burst_is_coalesced_into_one_push_with_the_badge,
        throttling_and_outages_are_retried_honouring_retry_after,
        a_dead_token_is_removed_and_never_used_again,
        mute_and_do_not_disturb_hold_pushes_back,
        a_message_deleted_within_the_grace_window_is_not_pushed_and_an_edited_one_is_pushed_as_edited,
        activity_is_pushed_once_per_burst_unless_muted_or_seen,
    ];
    security: [
        a_stolen_refresh_token_used_first_by_the_thief_logs_the_device_out_when_the_victim_refreshes,
    ];
    chat: [
        direct_chat_reaches_the_peer_and_the_senders_other_devices,
        group_messages_have_one_order_for_every_member,
        a_retried_send_is_acknowledged_again_but_stored_once,
        edits_and_deletes_reach_everyone_and_history_shows_tombstones,
        replies_name_an_existing_message,
        receipts_typing_and_presence,
        json_text_frames_work_end_to_end,
    ];
    sync: [
        reconnecting_clients_get_exactly_what_they_missed_in_order,
        a_connection_with_a_tiny_queue_catches_up_from_the_store_without_loss,
        sync_edges,
        a_client_resuming_a_stream_that_was_started_anew_is_told_to_start_over,
    ];
    rooms: [
        owners_and_admins_manage_groups_members_do_not,
        strangers_can_neither_read_nor_write_nor_probe,
        room_list_has_last_message_and_unread_counts_that_read_markers_clear,
        history_pages_backwards_and_forwards,
    ];
    durability: [
        acknowledged_messages_survive_kill_9,
    ];
    auth: [
        sign_up_log_in_refresh_and_log_out,
    ];
    bad_input: [
        invalid_arguments_and_unknown_ids,
    ];
}

/// The same tests with every message acknowledged before its fan-out (on ScyllaDB, large rooms'
/// messages are): what a sender, its peers and their other devices see stays the same.
mod fanned_out_after_the_ack {
    on_scylla! {
        on_scylla_after_ack;
        push: [
            offline_recipient_gets_exactly_one_push_with_the_right_payload,
            ack_within_the_grace_window_cancels_the_push,
            a_burst_is_coalesced_into_one_push_with_the_badge,
            a_message_deleted_within_the_grace_window_is_not_pushed_and_an_edited_one_is_pushed_as_edited,
        ];
        chat: [
            direct_chat_reaches_the_peer_and_the_senders_other_devices,
            group_messages_have_one_order_for_every_member,
            a_retried_send_is_acknowledged_again_but_stored_once,
            edits_and_deletes_reach_everyone_and_history_shows_tombstones,
            receipts_typing_and_presence,
        ];
        sync: [
            reconnecting_clients_get_exactly_what_they_missed_in_order,
            a_connection_with_a_tiny_queue_catches_up_from_the_store_without_loss,
            sync_edges,
        ];
        rooms: [
            owners_and_admins_manage_groups_members_do_not,
            room_list_has_last_message_and_unread_counts_that_read_markers_clear,
        ];
        durability: [
            acknowledged_messages_survive_kill_9,
        ];
    }
}
