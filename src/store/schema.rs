//! Diesel table definitions, shared by both backends (see `migrations/sqlite` and
//! `migrations/postgres`, which keep the same version names).

diesel::table! {
    resources (resource_type, id) {
        resource_type -> Text,
        id -> Text,
        version_id -> BigInt,
        last_updated -> BigInt,
        body -> Text,
    }
}

diesel::table! {
    resource_versions (resource_type, id, version_id) {
        resource_type -> Text,
        id -> Text,
        version_id -> BigInt,
        last_updated -> BigInt,
        body -> Text,
    }
}

diesel::table! {
    search_index (resource_type, param, value, resource_id) {
        resource_type -> Text,
        resource_id -> Text,
        param -> Text,
        value -> Text,
    }
}

diesel::table! {
    access_grants (resource_type, org_id, resource_id, source) {
        resource_type -> Text,
        resource_id -> Text,
        org_id -> Text,
        source -> Text,
    }
}

diesel::table! {
    idempotency_keys (client_id, request_key) {
        client_id -> Text,
        request_key -> Text,
        request_hash -> Text,
        response_status -> Integer,
        response_headers -> Text,
        response_body -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    conditional_creates (resource_type, query) {
        resource_type -> Text,
        query -> Text,
        resource_id -> Text,
    }
}

diesel::table! {
    api_clients (id) {
        id -> Text,
        name -> Text,
        role -> Text,
        organization_id -> Text,
        key_hash -> Text,
        created_at -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(resources, search_index, access_grants, change_log, resource_versions);
diesel::allow_tables_to_appear_in_same_query!(outbox, endpoint_state);

diesel::table! {
    routing_decisions (service_request_id) {
        service_request_id -> Text,
        sender_org -> Text,
        decided_at -> BigInt,
        unmatched -> Integer,
        explanation -> Text,
    }
}

diesel::table! {
    /// Moved by every write of a directory resource (`store::routing::directory_stamp`).
    directory_version (id) {
        id -> Integer,
        version -> BigInt,
    }
}

diesel::table! {
    change_counter (id) {
        id -> Integer,
        last_seq -> BigInt,
    }
}

diesel::table! {
    change_log (seq) {
        seq -> BigInt,
        resource_type -> Text,
        resource_id -> Text,
        version_id -> BigInt,
        changed_at -> BigInt,
    }
}

diesel::table! {
    endpoint_state (endpoint_id) {
        endpoint_id -> Text,
        secret -> Nullable<Text>,
        previous_secret -> Nullable<Text>,
        previous_until -> Nullable<BigInt>,
        event_counter -> BigInt,
        disabled -> Bool,
        last_success_at -> Nullable<BigInt>,
        last_failure_at -> Nullable<BigInt>,
        failing_since -> Nullable<BigInt>,
    }
}

diesel::table! {
    outbox (id) {
        id -> Text,
        endpoint_id -> Text,
        event_number -> BigInt,
        event_type -> Text,
        body -> Text,
        created_at -> BigInt,
        state -> Text,
        attempts -> Integer,
        next_attempt_at -> BigInt,
        lease_owner -> Nullable<Text>,
        lease_expires -> Nullable<BigInt>,
        fencing -> BigInt,
        last_error -> Nullable<Text>,
        delivered_at -> Nullable<BigInt>,
        headers -> Nullable<Text>,
    }
}

diesel::table! {
    pending_stages (event_id) {
        event_id -> Text,
        endpoint_id -> Text,
        task_id -> Text,
    }
}

diesel::table! {
    alerts (id) {
        id -> Text,
        kind -> Text,
        endpoint_id -> Text,
        event_id -> Nullable<Text>,
        message -> Text,
        created_at -> BigInt,
        attempts -> Integer,
        next_attempt_at -> BigInt,
        notified_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    provenance (id) {
        id -> Text,
        target_type -> Text,
        target_id -> Text,
        target_version -> BigInt,
        recorded -> BigInt,
        client -> Text,
        org -> Nullable<Text>,
        role -> Text,
        activity -> Text,
        correlation_id -> Text,
        reason -> Nullable<Text>,
    }
}

diesel::table! {
    messages (service_request_id) {
        service_request_id -> Text,
        bundle_id -> Text,
        correlation_id -> Text,
        source_endpoint -> Text,
        receiver_base -> Text,
        received_at -> BigInt,
    }
}

diesel::table! {
    open_tasks (org_id) {
        org_id -> Text,
        open -> BigInt,
    }
}

diesel::table! {
    task_queue (task_id) {
        task_id -> Text,
        owner_org -> Text,
        status -> Text,
        last_updated -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(task_queue, access_grants);
diesel::allow_tables_to_appear_in_same_query!(task_queue, resources);
