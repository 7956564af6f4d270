//! Results are stored and shown to clients: their JSON is a contract.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use serde_json::json;
use uuid::Uuid;

use kiln_jobs::*;

/// Results are stored and shown to clients: their JSON is a contract.
#[test]
fn results_serialize_to_their_stored_shape() {
    let id = Uuid::now_v7();
    let other = Uuid::now_v7();
    let generated = GenerateImageResult {
        generation_id: other,
        images: vec![GeneratedImage {
            id,
            width: 512,
            height: 256,
        }],
    };
    assert_eq!(
        serde_json::to_value(&generated).unwrap(),
        json!({"generation_id": other, "images": [{"id": id, "width": 512, "height": 256}]})
    );
    let upscaled = UpscaleImageResult {
        image_id: id,
        source_image_id: other,
        width: 2048,
        height: 2048,
        provider: "dev".into(),
        provider_latency_ms: 12,
    };
    assert_eq!(
        serde_json::to_value(&upscaled).unwrap(),
        json!({"image_id": id, "source_image_id": other, "width": 2048, "height": 2048,
               "provider": "dev", "provider_latency_ms": 12})
    );
    let probe = ProbeResult {
        attempt: 2,
        job_id: id,
        worker: "w-1".into(),
    };
    assert_eq!(
        serde_json::to_value(&probe).unwrap(),
        json!({"attempt": 2, "job_id": id, "worker": "w-1"})
    );
    let purged = RetentionPurgeResult {
        purged: [(DataClass::AccessLog, 3), (DataClass::FinishedJobs, 7)].into(),
    };
    assert_eq!(
        serde_json::to_value(&purged).unwrap(),
        json!({"purged": {"finished_jobs": 7, "access_log": 3}})
    );
    let sent = NoticeSent {
        provider: "dev".into(),
        provider_id: "m-1".into(),
    };
    assert_eq!(
        serde_json::to_value(&sent).unwrap(),
        json!({"provider": "dev", "provider_id": "m-1"})
    );
}
