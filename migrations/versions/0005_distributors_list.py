"""distributors list: members, join requests, vouches

Revision ID: 0005
Revises: 0004f
Create Date: 2026-12-04 14:31:13.756877
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import seclistd.models

revision: str = '0005'
down_revision: str | None = '0004f'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('members',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('list_name', sa.String(length=255), nullable=False),
    sa.Column('email', sa.String(length=998), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('organization', sa.Text(), nullable=False),
    sa.Column('fingerprint', sa.String(length=40), nullable=True),
    sa.Column('key_expires', seclistd.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('state_reason', sa.Text(), nullable=True),
    sa.Column('joined_at', seclistd.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('removed_at', seclistd.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('request_id', sa.String(length=32), nullable=True),
    sa.Column('bounce_token', sa.String(length=64), nullable=False),
    sa.Column('bounce_score', sa.Float(), nullable=False),
    sa.Column('last_bounce_at', seclistd.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('bounce_warnings', sa.Integer(), nullable=False),
    sa.Column('next_bounce_warning_at', seclistd.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('key_warned_at', seclistd.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('pending_fingerprint', sa.String(length=40), nullable=True),
    sa.Column('pending_token_sha256', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_members')),
    sa.UniqueConstraint('bounce_token', name=op.f('uq_members_bounce_token')),
    sa.UniqueConstraint('list_name', 'email', name='uq_members_list_email')
    )
    with op.batch_alter_table('members', schema=None) as batch_op:
        batch_op.create_index('ix_members_state', ['state'], unique=False)

    op.create_table('join_requests',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('list_name', sa.String(length=255), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('applicant', sa.String(length=998), nullable=False),
    sa.Column('applicant_name', sa.Text(), nullable=False),
    sa.Column('organization', sa.Text(), nullable=False),
    sa.Column('answers', sa.JSON(), nullable=False),
    sa.Column('missing_criteria', sa.JSON(), nullable=False),
    sa.Column('voucher_named', sa.Text(), nullable=False),
    sa.Column('voucher_member_id', sa.Integer(), nullable=True),
    sa.Column('fingerprint', sa.String(length=40), nullable=True),
    sa.Column('token_sha256', sa.String(length=64), nullable=True),
    sa.Column('key_proved_at', seclistd.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('pending_fingerprint', sa.String(length=40), nullable=True),
    sa.Column('pending_token_sha256', sa.String(length=64), nullable=True),
    sa.Column('root_message_id', sa.String(length=998), nullable=True),
    sa.Column('created_at', seclistd.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_activity_at', seclistd.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('decided_at', seclistd.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('decided_by', sa.String(length=998), nullable=True),
    sa.Column('member_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'],
                            name=op.f('fk_join_requests_member_id_members')),
    sa.ForeignKeyConstraint(['voucher_member_id'], ['members.id'],
                            name=op.f('fk_join_requests_voucher_member_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_join_requests'))
    )
    with op.batch_alter_table('join_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_join_requests_applicant'), ['applicant'], unique=False)
        batch_op.create_index('ix_join_requests_state_activity', ['state', 'last_activity_at'],
                              unique=False)

    op.create_table('member_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('member_id', sa.Integer(), nullable=False),
    sa.Column('at', seclistd.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=998), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('from_state', sa.String(length=16), nullable=True),
    sa.Column('to_state', sa.String(length=16), nullable=True),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'],
                            name=op.f('fk_member_events_member_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_member_events'))
    )
    with op.batch_alter_table('member_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_member_events_member_id'), ['member_id'], unique=False)

    op.create_table('request_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('at', seclistd.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=998), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('from_state', sa.String(length=16), nullable=True),
    sa.Column('to_state', sa.String(length=16), nullable=True),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['join_requests.id'],
                            name=op.f('fk_request_events_request_id_join_requests')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_request_events'))
    )
    with op.batch_alter_table('request_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_request_events_request_id'), ['request_id'],
                              unique=False)

    op.create_table('vouches',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('member_id', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sa.String(length=40), nullable=False),
    sa.Column('at', seclistd.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'],
                            name=op.f('fk_vouches_member_id_members')),
    sa.ForeignKeyConstraint(['request_id'], ['join_requests.id'],
                            name=op.f('fk_vouches_request_id_join_requests')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_vouches')),
    sa.UniqueConstraint('request_id', 'member_id', name='uq_vouches_request_member')
    )
    with op.batch_alter_table('vouches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vouches_request_id'), ['request_id'], unique=False)

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('request_id', sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f('ix_messages_request_id'), ['request_id'], unique=False)

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('request_id', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('member_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_outbox_member_id'), ['member_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_request_id'), ['request_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_request_id'))
        batch_op.drop_index(batch_op.f('ix_outbox_member_id'))
        batch_op.drop_column('member_id')
        batch_op.drop_column('request_id')

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_messages_request_id'))
        batch_op.drop_column('request_id')

    with op.batch_alter_table('vouches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_vouches_request_id'))

    op.drop_table('vouches')
    with op.batch_alter_table('request_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_request_events_request_id'))

    op.drop_table('request_events')
    with op.batch_alter_table('member_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_member_events_member_id'))

    op.drop_table('member_events')
    with op.batch_alter_table('join_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_join_requests_state_activity')
        batch_op.drop_index(batch_op.f('ix_join_requests_applicant'))

    op.drop_table('join_requests')
    with op.batch_alter_table('members', schema=None) as batch_op:
        batch_op.drop_index('ix_members_state')

    op.drop_table('members')
