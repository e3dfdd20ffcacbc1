//! Prompts: audio answered calls play. Written once (a new recording is a new prompt) and read
//! by data planes through the API, which cache them by id.

use dialer_api::views::Prompt;
use uuid::Uuid;

use crate::StoreError;
use crate::dialect::{Bind, Dialect, QueryExt, RowExt};

const COLUMNS: &str = "id, name, duration_ms, sha256, created_at";

fn prompt_from_row<R: RowExt>(r: &R) -> Result<Prompt, StoreError> {
    Ok(Prompt {
        id: r.col("id")?,
        name: r.col("name")?,
        duration_ms: r.col::<i64>("duration_ms")?.max(0) as u64,
        sha256: r.col("sha256")?,
        created_at: r.col("created_at")?,
    })
}

/// Stores a prompt: `wav` is its audio as 8 kHz mono 16-bit PCM WAV, `sha256` its hash.
pub async fn create_prompt<D: Dialect>(
    pool: &sqlx::Pool<D>,
    name: &str,
    duration_ms: u64,
    sha256: &str,
    wav: Vec<u8>,
) -> Result<Prompt, StoreError> {
    let p = Prompt {
        id: Uuid::now_v7(),
        name: name.to_string(),
        duration_ms,
        sha256: sha256.to_string(),
        created_at: crate::now(),
    };
    sqlx::query::<D>(
        "INSERT INTO prompts (id, name, duration_ms, sha256, audio, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .arg(p.id)
    .arg(p.name.clone())
    .arg(duration_ms as i64)
    .arg(p.sha256.clone())
    .arg(wav)
    .arg(p.created_at)
    .run(&mut *pool.acquire().await?)
    .await?;
    Ok(p)
}

pub async fn get_prompt<D: Dialect>(pool: &sqlx::Pool<D>, id: Uuid) -> Result<Prompt, StoreError> {
    let row = sqlx::query::<D>(&format!("SELECT {COLUMNS} FROM prompts WHERE id = $1"))
        .arg(id)
        .maybe_row(&mut *pool.acquire().await?)
        .await?
        .ok_or(StoreError::NotFound("prompt"))?;
    prompt_from_row(&row)
}

pub async fn list_prompts<D: Dialect>(pool: &sqlx::Pool<D>) -> Result<Vec<Prompt>, StoreError> {
    sqlx::query::<D>(&format!("SELECT {COLUMNS} FROM prompts ORDER BY id"))
        .rows(&mut *pool.acquire().await?)
        .await?
        .iter()
        .map(prompt_from_row)
        .collect()
}

/// The prompt's audio (WAV).
pub async fn prompt_audio<D: Dialect>(pool: &sqlx::Pool<D>, id: Uuid) -> Result<Vec<u8>, StoreError> {
    let row = sqlx::query::<D>("SELECT audio FROM prompts WHERE id = $1")
        .arg(id)
        .maybe_row(&mut *pool.acquire().await?)
        .await?
        .ok_or(StoreError::NotFound("prompt"))?;
    Ok(row.col("audio")?)
}

/// Which of `ids` name no prompt.
pub async fn missing_prompts<D: Dialect>(pool: &sqlx::Pool<D>, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
    let mut missing = Vec::new();
    let mut conn = pool.acquire().await?;
    for id in ids {
        let found = sqlx::query::<D>("SELECT id FROM prompts WHERE id = $1").arg(*id).maybe_row(&mut *conn).await?;
        if found.is_none() {
            missing.push(*id);
        }
    }
    Ok(missing)
}

/// Deletes a prompt no campaign names (`Ok(false)`: no such prompt). One a campaign names is
/// refused: its calls would have nothing to play.
pub async fn delete_prompt<D: Dialect>(pool: &sqlx::Pool<D>, id: Uuid) -> Result<bool, StoreError> {
    let mut tx = D::begin(pool).await?;
    let pattern = format!("%{id}%");
    let used = sqlx::query::<D>("SELECT id FROM campaigns WHERE telephony LIKE $1 AND status <> 'completed'")
        .arg(pattern)
        .maybe_row(&mut **tx)
        .await?;
    if let Some(r) = used {
        let campaign: Uuid = r.col("id")?;
        return Err(crate::Conflict::PromptInUse(campaign).into());
    }
    let gone = sqlx::query::<D>("DELETE FROM prompts WHERE id = $1").arg(id).run(&mut **tx).await?;
    tx.commit().await?;
    Ok(gone > 0)
}
