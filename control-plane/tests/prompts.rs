//! Prompts through the API, on both stores: a WAV upload stored as 16-bit PCM and read back
//! sample for sample, every unusable upload refused with what to send, campaigns that name a
//! prompt that does not exist refused by field, and a prompt a live campaign plays kept.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use dialer_control_plane::{ApiSettings, app};
use dialer_domain::media::g711::Law;
use dialer_domain::media::wav;
use dialer_testkit::both_stores;
use dialer_testkit::fixtures::Backend;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// A WAV file: `format` 1 (PCM, 16-bit), 6 (A-law) or 7 (µ-law).
fn wav_file(format: u16, channels: u16, rate: u32, data: &[u8]) -> Vec<u8> {
    let bits: u16 = if format == 1 { 16 } else { 8 };
    let mut w = Vec::new();
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&format.to_le_bytes());
    w.extend_from_slice(&channels.to_le_bytes());
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&(rate * u32::from(bits / 8) * u32::from(channels)).to_le_bytes());
    w.extend_from_slice(&(bits / 8 * channels).to_le_bytes());
    w.extend_from_slice(&bits.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&(data.len() as u32).to_le_bytes());
    w.extend_from_slice(data);
    w
}

async fn call(router: &axum::Router, method: Method, path: &str, ct: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let req = Request::builder().method(method).uri(path).header(header::CONTENT_TYPE, ct).body(Body::from(body));
    let resp = router.clone().oneshot(req.expect("request")).await.expect("answer");
    let status = resp.status();
    (status, resp.into_body().collect().await.expect("body").to_bytes().to_vec())
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|_| panic!("JSON, not {:?}", String::from_utf8_lossy(b)))
}

async fn prompts_are_stored_as_pcm_and_read_back(b: Backend) {
    let (store, _dir) = dialer_testkit::fixtures::store(b).await;
    let router = app(&ApiSettings::default(), store);
    // A µ-law upload of one second of a ramp: stored as 16-bit PCM, the same samples.
    let ulaw: Vec<u8> = (0..8000u32).map(|i| Law::Ulaw.encode(((i % 400) as i16 - 200) * 100)).collect();
    let (s, body) =
        call(&router, Method::POST, "/api/v1/prompts?name=reminder", "audio/wav", wav_file(7, 1, 8000, &ulaw)).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    let p = json_of(&body);
    assert_eq!((p["name"].as_str(), p["duration_ms"].as_u64()), (Some("reminder"), Some(1000)));
    let id = p["id"].as_str().expect("id").to_string();
    let (s, audio) = call(&router, Method::GET, &format!("/api/v1/prompts/{id}/audio"), "", vec![]).await;
    assert_eq!(s, StatusCode::OK);
    let back = wav::parse(&audio).expect("stored audio is a WAV file");
    let want: Vec<i16> = ulaw.iter().map(|b| Law::Ulaw.decode(*b)).collect();
    assert_eq!(back.samples, want, "the samples uploaded, as 16-bit PCM");
    let (s, one) = call(&router, Method::GET, &format!("/api/v1/prompts/{id}"), "", vec![]).await;
    assert_eq!((s, json_of(&one)["sha256"].as_str().map(str::len)), (StatusCode::OK, Some(64)));
    let (_, list) = call(&router, Method::GET, "/api/v1/prompts", "", vec![]).await;
    assert_eq!(json_of(&list)["prompts"][0]["id"].as_str(), Some(id.as_str()));
}

async fn unusable_uploads_are_refused_with_what_to_send(b: Backend) {
    let (store, _dir) = dialer_testkit::fixtures::store(b).await;
    let router = app(&ApiSettings::default(), store);
    let pcm: Vec<u8> = (0..16000i16).flat_map(|i| i.to_le_bytes()).collect();
    let cases: [(Vec<u8>, &str, &str); 4] = [
        (wav_file(1, 2, 8000, &pcm), "audio", "mono"),
        (wav_file(1, 1, 44_100, &pcm), "audio", "8000 Hz"),
        (b"ID3\x04mp3 bytes".to_vec(), "audio", "not a WAV file"),
        (wav_file(1, 1, 8000, &pcm[..400]), "audio", "at least 100 ms"),
    ];
    for (file, field, says) in cases {
        let (s, body) = call(&router, Method::POST, "/api/v1/prompts", "audio/wav", file).await;
        let e = json_of(&body);
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert_eq!(e["error"]["field"].as_str(), Some(field), "{e}");
        assert!(e["error"]["message"].as_str().unwrap_or("").contains(says), "{e}");
    }
    let (s, _) = call(&router, Method::POST, "/api/v1/prompts", "application/json", wav_file(1, 1, 8000, &pcm)).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let long_name = format!("/api/v1/prompts?name={}", "x".repeat(201));
    let (s, body) = call(&router, Method::POST, &long_name, "audio/wav", wav_file(1, 1, 8000, &pcm)).await;
    assert_eq!((s, json_of(&body)["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("name")));
    let (s, _) = call(&router, Method::GET, "/api/v1/prompts/01900000-0000-7000-8000-000000000009", "", vec![]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn campaigns_name_prompts_that_exist_and_keep_them(b: Backend) {
    let (store, _dir) = dialer_testkit::fixtures::store(b).await;
    let router = app(&ApiSettings::default(), store);
    let pcm: Vec<u8> = (0..8000i16).flat_map(|i| (i % 300 * 50).to_le_bytes()).collect();
    let (_, body) = call(&router, Method::POST, "/api/v1/prompts", "audio/wav", wav_file(1, 1, 8000, &pcm)).await;
    let prompt = json_of(&body)["id"].as_str().expect("id").to_string();
    let campaign = |media: Value| {
        json!({"name": format!("m{}", uuid::Uuid::now_v7()), "max_concurrent_calls": 2,
               "targets": [{"phone_number": "+15555550100"}], "telephony": {"media": media}})
        .to_string()
        .into_bytes()
    };
    let unknown = "01900000-0000-7000-8000-00000000000a";
    let (s, body) =
        call(&router, Method::POST, "/api/v1/campaigns", "application/json", campaign(json!({"prompt": unknown})))
            .await;
    let e = json_of(&body);
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("telephony.media.prompt")),
        "{e}"
    );
    let media = json!({"prompt": prompt, "voicemail_prompt": unknown, "amd": {}});
    let (s, body) = call(&router, Method::POST, "/api/v1/campaigns", "application/json", campaign(media)).await;
    assert_eq!(json_of(&body)["error"]["field"].as_str(), Some("telephony.media.voicemail_prompt"), "{s}");
    let bad_key = json!({"prompt": prompt, "keys": {"9": "opt_out", "8": "opt_out"}});
    let (s, body) = call(&router, Method::POST, "/api/v1/campaigns", "application/json", campaign(bad_key)).await;
    assert_eq!(
        (s, json_of(&body)["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("telephony.media.keys"))
    );
    let good = json!({"prompt": prompt, "keys": {"9": "opt_out"}, "amd": {"greeting_ms": 2000}});
    let (s, body) = call(&router, Method::POST, "/api/v1/campaigns", "application/json", campaign(good)).await;
    let c = json_of(&body);
    assert_eq!(s, StatusCode::CREATED, "{c}");
    assert_eq!(c["telephony"]["media"]["amd"]["greeting_ms"].as_u64(), Some(2000), "the plan as stored: {c}");
    let (s, body) = call(&router, Method::DELETE, &format!("/api/v1/prompts/{prompt}"), "", vec![]).await;
    let e = json_of(&body);
    assert_eq!(s, StatusCode::CONFLICT, "a live campaign plays it: {e}");
    assert!(
        e["error"]["message"].as_str().unwrap_or("").contains(c["id"].as_str().expect("id")),
        "names the campaign: {e}"
    );
    let cid = c["id"].as_str().expect("id");
    let (s, _) = call(&router, Method::POST, &format!("/api/v1/campaigns/{cid}/complete"), "", vec![]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&router, Method::DELETE, &format!("/api/v1/prompts/{prompt}"), "", vec![]).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "a completed campaign no longer needs it");
    let (s, _) = call(&router, Method::DELETE, &format!("/api/v1/prompts/{prompt}"), "", vec![]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

both_stores!(
    prompts_are_stored_as_pcm_and_read_back,
    unusable_uploads_are_refused_with_what_to_send,
    campaigns_name_prompts_that_exist_and_keep_them
);

/// The recorder counts each answered attempt's media, and a keypress opt-out puts the number
/// on the campaign's (or the global) list in the same transaction, to be announced to the
/// shards; the counts equal a fresh count of the attempts.
async fn recorded_media_counts_and_opt_outs_land_on_their_list(b: Backend) {
    use dialer_domain::media::{AnsweredBy, MediaResult, OptOutList};
    use dialer_domain::messages::EventKind;
    let (s, _dir) = dialer_testkit::fixtures::store(b).await;
    let c = dialer_testkit::fixtures::campaign(&s, "media-stats", 5, 10, json!([])).await;
    s.transition(c.id, dialer_domain::campaign::CampaignAction::Start).await.expect("start");
    let claimed = s.claim_due(c.id, 5, chrono::Utc::now()).await.expect("claim");
    assert_eq!(claimed.len(), 5);
    let media = [
        MediaResult {
            answered_by: Some(AnsweredBy::Human),
            dtmf: Some("9".into()),
            opted_out: true,
            opt_out_list: Some(OptOutList::Campaign),
            ..Default::default()
        },
        MediaResult {
            answered_by: Some(AnsweredBy::Human),
            dtmf: Some("9".into()),
            opted_out: true,
            opt_out_list: Some(OptOutList::Global),
            ..Default::default()
        },
        MediaResult { answered_by: Some(AnsweredBy::Machine), voicemail_left: true, ..Default::default() },
        MediaResult { answered_by: Some(AnsweredBy::Human), abandoned: true, ..Default::default() },
        MediaResult { answered_by: Some(AnsweredBy::Unknown), ..Default::default() },
    ];
    let mut events = Vec::new();
    for (k, m) in claimed.iter().zip(media) {
        events.push(dialer_testkit::fixtures::event(c.id, k, EventKind::Started));
        let mut done = dialer_testkit::fixtures::event(c.id, k, EventKind::Completed);
        done.media = Some(Box::new(m));
        events.push(done);
    }
    s.record_events(&events, &mut || 0.5, None).await.expect("recorded");
    let stats = s.stats(c.id).await.expect("stats");
    let m = stats.media;
    assert_eq!((m.answered_human, m.answered_machine, m.answered_unknown), (3, 1, 1), "{m:?}");
    assert_eq!((m.voicemail_left, m.opted_out, m.abandoned), (1, 2, 1), "{m:?}");
    assert!((m.abandoned_share() - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(s.recount_stats(c.id).await.expect("recount").media, m, "the counts equal the attempts'");
    let on_campaign = s.dnc_get(c.id, &claimed[0].phone_number).await.expect("dnc");
    let on_global = s.dnc_get(dialer_domain::dnc::GLOBAL_LIST, &claimed[1].phone_number).await.expect("dnc");
    let entry = on_campaign.expect("the first number on the campaign's list");
    assert_eq!((entry.reason.as_deref(), entry.source.as_deref()), (Some("opt_out"), Some("keypress")));
    assert!(on_global.is_some(), "the second on the global list");
    assert!(s.dnc_get(c.id, &claimed[2].phone_number).await.expect("dnc").is_none(), "no key, no entry");
    let pending = s.unannounced(100).await.expect("unannounced");
    assert_eq!(pending.len(), 2, "both opt-outs wait to be announced to the shards: {pending:?}");
    // Recording the same events again (a redelivery) counts nothing twice.
    s.record_events(&events, &mut || 0.5, None).await.expect("again");
    assert_eq!(s.stats(c.id).await.expect("stats").media, m);
}

mod recorder {
    use super::*;
    both_stores!(recorded_media_counts_and_opt_outs_land_on_their_list);
}
