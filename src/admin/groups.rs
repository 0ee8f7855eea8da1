//! `/api/v1/groups`: the fair-share groups tenants belong to.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::api::{views, ApiState, Change};
use super::error::{ApiJson, ApiResult, Body, ErrorBody, Path};
use crate::store::Group;

/// The routes of this file, for [`super::api::router`].
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_groups, create_group))
        .routes(routes!(get_group, put_group, delete_group))
}

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
async fn list_groups(State(s): State<ApiState>) -> ApiJson<Vec<GroupView>> {
    Ok(views(s.llm.store.groups().await?))
}

#[utoipa::path(post, path = "/api/v1/groups", tag = "groups", request_body = Group,
    responses((status = 201, body = GroupView), (status = 400, body = ErrorBody),
        (status = 409, description = "A group of that name exists", body = ErrorBody)))]
async fn create_group(
    Change(s, actor): Change,
    Body(group): Body<Group>,
) -> ApiResult<(StatusCode, Json<GroupView>)> {
    let group = s.llm.store.put_group(&actor, &group, false).await?;
    Ok((StatusCode::CREATED, Json(group.into())))
}

#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    responses((status = 200, body = GroupView), (status = 404, body = ErrorBody)))]
async fn get_group(State(s): State<ApiState>, Path(name): Path<String>) -> ApiJson<GroupView> {
    Ok(Json(s.llm.store.group(&name).await?.into()))
}

/// Changes a group's weight; the tenants in it are re-weighted at once on
/// every replica.
#[utoipa::path(put, path = "/api/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    request_body = GroupWeight,
    responses((status = 200, body = GroupView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn put_group(
    Change(s, actor): Change,
    Path(name): Path<String>,
    Body(w): Body<GroupWeight>,
) -> ApiJson<GroupView> {
    s.llm.store.group(&name).await?;
    let group = Group {
        name,
        weight: w.weight,
    };
    let group = s.llm.store.put_group(&actor, &group, true).await?;
    let hashes = s.llm.store.key_hashes_of_group(&group.name).await?;
    s.llm.changed(&hashes).await;
    Ok(Json(group.into()))
}

#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody),
        (status = 409, description = "The group still has tenants, or is `default`", body = ErrorBody)))]
async fn delete_group(Change(s, actor): Change, Path(name): Path<String>) -> ApiResult<StatusCode> {
    s.llm.store.delete_group(&actor, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
