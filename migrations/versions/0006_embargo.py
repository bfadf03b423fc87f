"""embargo: announcements, recipients, attachments, leaks

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 15:15:19.967179
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import seclistd.models

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('announcements',
    sa.Column('case_id', sa.String(length=32), nullable=False),
    sa.Column('list_name', sa.String(length=255), nullable=False),
    sa.Column('until', seclistd.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', seclistd.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=998), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('public_at', seclistd.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_announcements_case_id_cases')),
    sa.PrimaryKeyConstraint('case_id', name=op.f('pk_announcements'))
    )
    with op.batch_alter_table('announcements', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_announcements_until'), ['until'], unique=False)

    op.create_table('leaks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.String(length=32), nullable=False),
    sa.Column('member_id', sa.Integer(), nullable=True),
    sa.Column('reported_by', sa.String(length=998), nullable=False),
    sa.Column('signed', sa.Boolean(), nullable=False),
    sa.Column('at', seclistd.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_leaks_case_id_cases')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_leaks_member_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_leaks'))
    )
    with op.batch_alter_table('leaks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_leaks_case_id'), ['case_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_leaks_member_id'), ['member_id'], unique=False)

    op.create_table('announcement_attachments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.String(length=32), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('content_type', sa.String(length=255), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('added_at', seclistd.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['announcements.case_id'],
                            name=op.f('fk_announcement_attachments_case_id_announcements')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_announcement_attachments'))
    )
    with op.batch_alter_table('announcement_attachments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_announcement_attachments_case_id'), ['case_id'],
                              unique=False)

    op.create_table('announcement_recipients',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.String(length=32), nullable=False),
    sa.Column('member_id', sa.Integer(), nullable=True),
    sa.Column('email', sa.String(length=998), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('token', sa.String(length=64), nullable=False),
    sa.Column('outbox_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('sent_at', seclistd.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('acknowledged_at', seclistd.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('vendor_status', sa.String(length=16), nullable=True),
    sa.Column('statement', sa.Text(), nullable=True),
    sa.Column('status_at', seclistd.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('reminded_at', seclistd.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['announcements.case_id'],
                            name=op.f('fk_announcement_recipients_case_id_announcements')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'],
                            name=op.f('fk_announcement_recipients_member_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_announcement_recipients')),
    sa.UniqueConstraint('token', name=op.f('uq_announcement_recipients_token'))
    )
    with op.batch_alter_table('announcement_recipients', schema=None) as batch_op:
        batch_op.create_index('ix_announcement_recipients_case_email', ['case_id', 'email'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_announcement_recipients_case_id'), ['case_id'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_announcement_recipients_member_id'), ['member_id'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_announcement_recipients_outbox_id'), ['outbox_id'],
                              unique=False)

    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fixed_version', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('released_at', seclistd.models.UTCDateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('workaround', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('disclosed_at', seclistd.models.UTCDateTime(timezone=True),
                                      nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_column('disclosed_at')
        batch_op.drop_column('workaround')
        batch_op.drop_column('released_at')
        batch_op.drop_column('fixed_version')

    with op.batch_alter_table('announcement_recipients', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_announcement_recipients_outbox_id'))
        batch_op.drop_index(batch_op.f('ix_announcement_recipients_member_id'))
        batch_op.drop_index(batch_op.f('ix_announcement_recipients_case_id'))
        batch_op.drop_index('ix_announcement_recipients_case_email')

    op.drop_table('announcement_recipients')
    with op.batch_alter_table('announcement_attachments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_announcement_attachments_case_id'))

    op.drop_table('announcement_attachments')
    with op.batch_alter_table('leaks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_leaks_member_id'))
        batch_op.drop_index(batch_op.f('ix_leaks_case_id'))

    op.drop_table('leaks')
    with op.batch_alter_table('announcements', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_announcements_until'))

    op.drop_table('announcements')
