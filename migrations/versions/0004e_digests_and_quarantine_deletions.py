"""team digest entries, quarantine deletion records, an index for the hourly answer cap

Revision ID: 0004e
Revises: 0003
Create Date: 2026-11-22 10:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import seclistd.models

revision: str = '0004e'
down_revision: str | None = '0004c'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('digest_entries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('ref', sa.String(length=64), nullable=False),
    sa.Column('line', sa.Text(), nullable=False),
    sa.Column('at', seclistd.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('digested_at', seclistd.models.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_digest_entries'))
    )
    with op.batch_alter_table('digest_entries', schema=None) as batch_op:
        batch_op.create_index('ix_digest_entries_pending', ['kind', 'digested_at'],
                              unique=False)

    op.create_table('quarantine_deletions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('deleted_at', seclistd.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=998), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('received_at', seclistd.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('header_message_id', sa.String(length=998), nullable=True),
    sa.Column('from_addr', sa.String(length=998), nullable=True),
    sa.Column('envelope_from', sa.String(length=998), nullable=True),
    sa.Column('quarantine_reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_quarantine_deletions'))
    )
    with op.batch_alter_table('quarantine_deletions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_quarantine_deletions_message_id'), ['message_id'],
                              unique=False)

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_auto_created', ['auto', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_auto_created')

    with op.batch_alter_table('quarantine_deletions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_quarantine_deletions_message_id'))
    op.drop_table('quarantine_deletions')

    with op.batch_alter_table('digest_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_digest_entries_pending')
    op.drop_table('digest_entries')
