//! The KMS sealer against moto's KMS: the encryption context binds a sealed URL to its job.

use job_model::seal::{Field, KmsSealer};
use job_model::{SealError, Sealer, Secret};

async fn sealer() -> (KmsSealer, KmsSealer) {
    let moto = moto_harness::Moto::shared();
    let client = aws_sdk_kms::Client::new(&moto.sdk_config().await);
    let key = client
        .create_key()
        .description(moto_harness::unique("seren-test"))
        .send()
        .await
        .expect("create key");
    let key_id = key
        .key_metadata()
        .map(|m| m.key_id().to_owned())
        .expect("key id");
    (
        KmsSealer::new(client.clone(), key_id),
        KmsSealer::opener(client),
    )
}

#[tokio::test]
async fn kms_sealed_urls_open_only_for_their_job() {
    let (sealer, opener) = sealer().await;
    let url = Secret::new("postgresql://app:s%3Bcr%26%26t$(x)@db.example.com:5432/prod");
    let src = Field::SourceUrl;
    let blob = sealer.seal("job-1", src, &url).await.expect("seal");
    assert!(!String::from_utf8_lossy(&blob).contains("s%3Bcr"));
    assert_eq!(sealer.open("job-1", src, &blob).await.expect("open"), url);
    let err = sealer
        .open("job-2", src, &blob)
        .await
        .expect_err("other job");
    assert!(matches!(err, SealError::Open { .. }), "{err}");
    assert!(!err.to_string().contains("s%3Bcr"), "{err}");
    // The source's blob put in the target's place does not open either.
    let err = sealer
        .open("job-1", Field::TargetUrl, &blob)
        .await
        .expect_err("other field");
    assert!(matches!(err, SealError::Open { .. }), "{err}");
    // A worker opens without knowing the key id, and cannot seal.
    assert_eq!(opener.open("job-1", src, &blob).await.expect("open"), url);
    assert!(opener.open("job-2", src, &blob).await.is_err());
    assert!(matches!(
        opener.seal("job-1", src, &url).await,
        Err(SealError::Key(_))
    ));
}
