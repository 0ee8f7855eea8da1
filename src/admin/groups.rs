//! `/api/v1/groups`: the fair-share groups tenants belong to.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{actor, ApiState};
use super::error::{ApiResult, Body, ErrorBody, Path};
use crate::store::Group;

/// A group as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct GroupView {
    name: String,
    #[schema(minimum = 1)]
    weight: u32,
}

impl From<Group> for GroupView {
    fn from(g: Group) -> Self {
        Self {
            name: g.name,
            weight: g.weight,
        }
    }
}

/// Body of `PUT /groups/{name}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupWeight {
    #[schema(minimum = 1, maximum = 1000000)]
    weight: u32,
}

#[utoipa::path(get, path = "/api/v1/groups", tag = "groups",
    responses((status = 200, body = Vec<GroupView>)))]
pub(super) async fn list_groups(State(s): State<ApiState>) -> ApiResult<Json<Vec<GroupView>>> {
    let groups = s.llm.store.groups().await?;
    Ok(Json(groups.into_iter().map(GroupView::from).collect()))
}

#[utoipa::path(post, path = "/api/v1/groups", tag = "groups", request_body = Group,
    responses((status = 201, body = GroupView), (status = 400, body = ErrorBody),
        (status = 409, description = "A group of that name exists", body = ErrorBody)))]
pub(super) async fn create_group(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Body(group): Body<Group>,
) -> ApiResult<(StatusCode, Json<GroupView>)> {
    let group = s
        .llm
        .store
        .put_group(&actor(&headers), &group, false)
        .await?;
    Ok((StatusCode::CREATED, Json(group.into())))
}

#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    responses((status = 200, body = GroupView), (status = 404, body = ErrorBody)))]
pub(super) async fn get_group(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<GroupView>> {
    Ok(Json(s.llm.store.group(&name).await?.into()))
}

/// Changes a group's weight; the tenants in it are re-weighted at once on
/// every replica.
#[utoipa::path(put, path = "/api/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    request_body = GroupWeight,
    responses((status = 200, body = GroupView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn put_group(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(w): Body<GroupWeight>,
) -> ApiResult<Json<GroupView>> {
    s.llm.store.group(&name).await?;
    let group = s
        .llm
        .store
        .put_group(
            &actor(&headers),
            &Group {
                name: name.clone(),
                weight: w.weight,
            },
            true,
        )
        .await?;
    let mut hashes = Vec::new();
    for t in s
        .llm
        .store
        .tenants()
        .await?
        .iter()
        .filter(|t| t.spec.group == name)
    {
        hashes.extend(s.llm.store.key_hashes_of_tenant(&t.id).await?);
    }
    s.llm.changed(&hashes).await;
    Ok(Json(group.into()))
}

#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody),
        (status = 409, description = "The group still has tenants, or is `default`", body = ErrorBody)))]
pub(super) async fn delete_group(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.llm.store.delete_group(&actor(&headers), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
