//! The in-process world of the operator tests: an API behind a proxy that
//! names the client, with Ada (no operator) and Olga (an operator).

use kiln_api::testing::{TestApi, test_config};
use kiln_jobs::UserId;
use kiln_store::{accounts::Identifier, testing::TestDatabase};

pub const PASSWORD: &str = "correct horse battery";
pub const OPERATOR_IP: &str = "203.0.113.7";

pub struct World {
    pub api: TestApi,
    /// Ada's bearer token: she is no operator.
    pub ada: String,
    /// Olga's bearer token: she is one.
    pub olga: String,
    pub olga_id: UserId,
}

pub async fn world() -> World {
    let db = TestDatabase::sqlite();
    let store = db.store().await.unwrap();
    // Behind a proxy that names the client, so the log has an IP.
    let config = kiln_api::ApiConfig {
        client_ip_header: Some("x-forwarded-for".into()),
        ..test_config()
    };
    let api = TestApi::with_config(store, config).keeping(db);
    let ada = api.signed_up("ada@example.com", PASSWORD).await;
    let olga = api.signed_up("olga@example.com", PASSWORD).await;
    let olga_email = Identifier::Email("olga@example.com".into());
    api.store().set_operator(&olga_email, true).await.unwrap();
    let olga_id = api
        .store()
        .login_record(&olga_email)
        .await
        .unwrap()
        .unwrap()
        .user_id;
    World {
        api,
        ada,
        olga,
        olga_id,
    }
}
