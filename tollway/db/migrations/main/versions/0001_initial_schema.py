"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-30 01:42:03.186524
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "channels",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("type", sa.Integer(), server_default="0", nullable=False),
        sa.Column("key_value", sa.Text(), nullable=False),
        sa.Column("openai_organization", sa.String(length=255), nullable=True),
        sa.Column("test_model", sa.String(length=255), nullable=True),
        sa.Column("status", sa.Integer(), server_default="1", nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("weight", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_time", sa.BigInteger(), nullable=False),
        sa.Column("test_time", sa.BigInteger(), nullable=False),
        sa.Column("response_time", sa.Integer(), server_default="0", nullable=False),
        sa.Column("base_url", sa.String(length=512), server_default="", nullable=False),
        sa.Column("other", sa.Text(), nullable=True),
        sa.Column(
            "balance", sa.Numeric(precision=14, scale=4, asdecimal=False), server_default="0", nullable=False
        ),
        sa.Column("balance_updated_time", sa.BigInteger(), nullable=False),
        sa.Column("models", sa.Text(), nullable=False),
        sa.Column("group_name", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("used_quota", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("model_mapping", sa.Text(), nullable=True),
        sa.Column("status_code_mapping", sa.String(length=1024), nullable=True),
        sa.Column("priority", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("auto_ban", sa.Integer(), server_default="1", nullable=False),
        sa.Column("other_info", sa.Text(), nullable=True),
        sa.Column("tag", sa.String(length=255), nullable=True),
        sa.Column("setting", sa.Text(), nullable=True),
        sa.Column("param_override", sa.Text(), nullable=True),
        sa.Column("multi_key_mode", sa.String(length=16), server_default="random", nullable=False),
        sa.Column("multi_key_status", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.Column("updated_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channels")),
    )
    with op.batch_alter_table("channels", schema=None) as batch_op:
        batch_op.create_index("idx_channels_group_status", ["group_name", "status"], unique=False)
        batch_op.create_index("idx_channels_type_status", ["type", "status"], unique=False)
        batch_op.create_index(batch_op.f("ix_channels_group_name"), ["group_name"], unique=False)
        batch_op.create_index(batch_op.f("ix_channels_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_channels_priority"), ["priority"], unique=False)
        batch_op.create_index(batch_op.f("ix_channels_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_channels_tag"), ["tag"], unique=False)
        batch_op.create_index(batch_op.f("ix_channels_type"), ["type"], unique=False)

    op.create_table(
        "midjourney",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("mj_id", sa.String(length=255), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("prompt_en", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=255), nullable=True),
        sa.Column("submit_time", sa.BigInteger(), nullable=False),
        sa.Column("start_time", sa.BigInteger(), nullable=False),
        sa.Column("finish_time", sa.BigInteger(), nullable=False),
        sa.Column("image_url", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("progress", sa.String(length=20), nullable=False),
        sa.Column("fail_reason", sa.Text(), nullable=True),
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("quota", sa.BigInteger(), nullable=False),
        sa.Column("buttons", sa.Text(), nullable=True),
        sa.Column("properties", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.Column("updated_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_midjourney")),
    )
    with op.batch_alter_table("midjourney", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_midjourney_action"), ["action"], unique=False)
        batch_op.create_index(batch_op.f("ix_midjourney_channel_id"), ["channel_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_midjourney_mj_id"), ["mj_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_midjourney_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_midjourney_submit_time"), ["submit_time"], unique=False)
        batch_op.create_index(batch_op.f("ix_midjourney_user_id"), ["user_id"], unique=False)

    op.create_table(
        "options",
        sa.Column("key_name", sa.String(length=255), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.Column("updated_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.PrimaryKeyConstraint("key_name", name=op.f("pk_options")),
    )
    op.create_table(
        "quota_data",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("token_used", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("quota", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quota_data")),
    )
    with op.batch_alter_table("quota_data", schema=None) as batch_op:
        batch_op.create_index("idx_quota_data_model_user_name", ["model_name", "username"], unique=False)
        batch_op.create_index(batch_op.f("ix_quota_data_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_quota_data_model_name"), ["model_name"], unique=False)
        batch_op.create_index(batch_op.f("ix_quota_data_user_id"), ["user_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_quota_data_username"), ["username"], unique=False)
        batch_op.create_index(
            "uq_quota_data_bucket", ["user_id", "username", "model_name", "created_at"], unique=True
        )

    op.create_table(
        "redemptions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("key_value", sa.String(length=64), nullable=False),
        sa.Column("status", sa.Integer(), server_default="1", nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("quota", sa.BigInteger(), server_default="100", nullable=False),
        sa.Column("created_time", sa.BigInteger(), nullable=False),
        sa.Column("redeemed_time", sa.BigInteger(), nullable=False),
        sa.Column("used_user_id", sa.Integer(), nullable=False),
        sa.Column("is_gift", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("max_uses", sa.Integer(), server_default="-1", nullable=False),
        sa.Column("used_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("valid_from", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("valid_until", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.Column("updated_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.Column("deleted_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_redemptions")),
    )
    with op.batch_alter_table("redemptions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_redemptions_deleted_at"), ["deleted_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_redemptions_is_gift"), ["is_gift"], unique=False)
        batch_op.create_index(batch_op.f("ix_redemptions_key_value"), ["key_value"], unique=True)
        batch_op.create_index(batch_op.f("ix_redemptions_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_redemptions_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_redemptions_user_id"), ["user_id"], unique=False)

    op.create_table(
        "setup",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("is_setup", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.Column("updated_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_setup")),
    )
    op.create_table(
        "tasks",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("platform", sa.String(length=30), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("quota", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("fail_reason", sa.Text(), nullable=True),
        sa.Column("submit_time", sa.BigInteger(), nullable=False),
        sa.Column("start_time", sa.BigInteger(), nullable=False),
        sa.Column("finish_time", sa.BigInteger(), nullable=False),
        sa.Column("progress", sa.String(length=20), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tasks_action"), ["action"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_channel_id"), ["channel_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_finish_time"), ["finish_time"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_platform"), ["platform"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_start_time"), ["start_time"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_submit_time"), ["submit_time"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_task_id"), ["task_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_user_id"), ["user_id"], unique=False)

    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password", sa.String(length=255), nullable=False),
        sa.Column("display_name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.Integer(), server_default="1", nullable=False),
        sa.Column("status", sa.Integer(), server_default="1", nullable=False),
        sa.Column("email", sa.String(length=255), nullable=True),
        sa.Column("github_id", sa.String(length=64), nullable=True),
        sa.Column("oidc_id", sa.String(length=64), nullable=True),
        sa.Column("wechat_id", sa.String(length=64), nullable=True),
        sa.Column("telegram_id", sa.String(length=64), nullable=True),
        sa.Column("linux_do_id", sa.String(length=64), nullable=True),
        sa.Column("access_token", sa.String(length=64), nullable=True),
        sa.Column("quota", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("used_quota", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("request_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("group_name", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("aff_code", sa.String(length=32), nullable=True),
        sa.Column("aff_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("aff_quota", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("aff_history_quota", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("inviter_id", sa.Integer(), nullable=True),
        sa.Column("setting", sa.Text(), nullable=True),
        sa.Column("last_check_in_time", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.Column("updated_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.Column("deleted_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_users_deleted_at"), ["deleted_at"], unique=False)
        batch_op.create_index("idx_users_email_status", ["email", "status"], unique=False)
        batch_op.create_index("idx_users_username_status", ["username", "status"], unique=False)
        batch_op.create_index(batch_op.f("ix_users_access_token"), ["access_token"], unique=True)
        batch_op.create_index(batch_op.f("ix_users_aff_code"), ["aff_code"], unique=True)
        batch_op.create_index(batch_op.f("ix_users_email"), ["email"], unique=False)
        batch_op.create_index(batch_op.f("ix_users_github_id"), ["github_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_users_inviter_id"), ["inviter_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_users_linux_do_id"), ["linux_do_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_users_oidc_id"), ["oidc_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_users_telegram_id"), ["telegram_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_users_username"), ["username"], unique=True)
        batch_op.create_index(batch_op.f("ix_users_wechat_id"), ["wechat_id"], unique=False)

    op.create_table(
        "abilities",
        sa.Column("group_name", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("priority", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("weight", sa.Integer(), server_default="0", nullable=False),
        sa.Column("tag", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.Column("updated_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.ForeignKeyConstraint(
            ["channel_id"], ["channels.id"], name=op.f("fk_abilities_channel_id_channels"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("group_name", "model", "channel_id", name=op.f("pk_abilities")),
    )
    with op.batch_alter_table("abilities", schema=None) as batch_op:
        batch_op.create_index("idx_abilities_group_model", ["group_name", "model"], unique=False)
        batch_op.create_index("idx_abilities_model_enabled", ["model", "enabled"], unique=False)
        batch_op.create_index(batch_op.f("ix_abilities_channel_id"), ["channel_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_abilities_enabled"), ["enabled"], unique=False)
        batch_op.create_index(batch_op.f("ix_abilities_priority"), ["priority"], unique=False)
        batch_op.create_index(batch_op.f("ix_abilities_tag"), ["tag"], unique=False)
        batch_op.create_index(batch_op.f("ix_abilities_weight"), ["weight"], unique=False)

    op.create_table(
        "redemption_logs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("redemption_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("used_time", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.ForeignKeyConstraint(
            ["redemption_id"],
            ["redemptions.id"],
            name=op.f("fk_redemption_logs_redemption_id_redemptions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_redemption_logs_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_redemption_logs")),
    )
    with op.batch_alter_table("redemption_logs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_redemption_logs_redemption_id"), ["redemption_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_redemption_logs_used_time"), ["used_time"], unique=False)
        batch_op.create_index(batch_op.f("ix_redemption_logs_user_id"), ["user_id"], unique=False)
        batch_op.create_index("uq_redemption_logs_redemption_user", ["redemption_id", "user_id"], unique=True)

    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("key_encrypted", sa.Text(), nullable=False),
        sa.Column("key_hint", sa.String(length=16), nullable=False),
        sa.Column("status", sa.Integer(), server_default="1", nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("created_time", sa.BigInteger(), nullable=False),
        sa.Column("accessed_time", sa.BigInteger(), nullable=False),
        sa.Column("expired_time", sa.BigInteger(), server_default="-1", nullable=False),
        sa.Column("remain_quota", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("unlimited_quota", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("used_quota", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("model_limits_enabled", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("model_limits", sa.String(length=1024), nullable=False),
        sa.Column("allow_ips", sa.String(length=1024), nullable=True),
        sa.Column("group_name", sa.String(length=64), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.Column("updated_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.Column("deleted_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tokens")),
    )
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tokens_deleted_at"), ["deleted_at"], unique=False)
        batch_op.create_index("idx_tokens_key_status", ["key_hash", "status"], unique=False)
        batch_op.create_index("idx_tokens_user_status", ["user_id", "status"], unique=False)
        batch_op.create_index(batch_op.f("ix_tokens_key_hash"), ["key_hash"], unique=True)
        batch_op.create_index(batch_op.f("ix_tokens_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_tokens_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_tokens_user_id"), ["user_id"], unique=False)

    op.create_table(
        "topups",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=14, scale=2, asdecimal=False), nullable=False),
        sa.Column("money", sa.Numeric(precision=14, scale=2, asdecimal=False), nullable=False),
        sa.Column("quota", sa.BigInteger(), nullable=False),
        sa.Column("trade_no", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("payment_method", sa.String(length=64), nullable=False),
        sa.Column("created_time", sa.BigInteger(), nullable=False),
        sa.Column("paid_time", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.Column("updated_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_topups_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_topups")),
    )
    with op.batch_alter_table("topups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_topups_created_time"), ["created_time"], unique=False)
        batch_op.create_index(batch_op.f("ix_topups_payment_method"), ["payment_method"], unique=False)
        batch_op.create_index(batch_op.f("ix_topups_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_topups_trade_no"), ["trade_no"], unique=True)
        batch_op.create_index(batch_op.f("ix_topups_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    # Tollway migrations are never destructive: there is no automatic downgrade.
    raise RuntimeError("downgrades are not supported; restore a backup instead")
