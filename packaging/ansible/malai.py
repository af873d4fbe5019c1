# An Ansible connection plugin that reaches machines through malai: modules
# run through `malai MACHINE.CLUSTER /bin/sh -c CMD` (the shell Ansible
# expects, decided by the machine's ACL like any command), files move with
# `malai cp`. malai never switches users: `become` is not a sudo or su
# wrapper here but asks the machine to run the command as become_user
# (`malai -l USER`), which it refuses unless its ACL runs commands as that
# user. The .deb installs this file in /usr/share/ansible/plugins/connection/,
# where Ansible looks; elsewhere set ANSIBLE_CONNECTION_PLUGINS to its
# directory.

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = '''
    name: malai
    short_description: run tasks on machines of a malai cluster
    description:
        - Runs commands with C(malai MACHINE.CLUSTER /bin/sh -c ...) and copies
          files with C(malai cp), over malai's encrypted peer-to-peer network.
          The inventory host name (or ansible_host) is the machine's
          MACHINE.CLUSTER. The machine's ACL decides, as for any malai command.
        - become does not wrap commands in sudo or su. It asks the machine to
          run them as become_user (malai -l), which the machine refuses unless
          its ACL already runs commands as that user.
    author: malai maintainers
    options:
      host:
        description: The target, MACHINE.CLUSTER.
        default: inventory_hostname
        vars:
          - name: inventory_hostname
          - name: ansible_host
      malai_executable:
        description: The malai program to run.
        default: malai
        ini:
          - section: malai_connection
            key: malai_executable
        env:
          - name: ANSIBLE_MALAI_EXECUTABLE
        vars:
          - name: ansible_malai_executable
'''

import os
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils._text import to_bytes, to_native
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

display = Display()

# malai's exit status when it could not run the command at all (the machine
# unreachable, or the ACL refused it), as ssh's.
NOT_RUN = 255


class _AsUser(object):
    '''The task's become plugin, minus the wrapping: the command is sent as
    it is, and the connection asks for become_user with malai -l.'''

    def __init__(self, plugin):
        self._plugin = plugin

    def __getattr__(self, name):
        return getattr(self._plugin, name)

    def build_become_command(self, cmd, shell):
        return cmd

    def expect_prompt(self):
        return False


class Connection(ConnectionBase):
    ''' malai connections '''

    transport = 'malai'
    has_pipelining = True

    def _connect(self):
        self._connected = True
        return self

    def set_become_plugin(self, plugin):
        super(Connection, self).set_become_plugin(_AsUser(plugin) if plugin else None)

    def _target(self):
        return self.get_option('host') or self._play_context.remote_addr

    def _user(self, sudoable):
        '''The user the command must run as: become_user when becoming, else
        the remote user when one is set (malai refuses any other).'''
        if sudoable and self.become is not None:
            return self.become.get_option('become_user') or 'root'
        return self._play_context.remote_user

    def _malai(self, args, in_data=None, what='malai'):
        argv = [self.get_option('malai_executable')] + args
        display.vvv(u'MALAI {0}'.format(argv), host=self._target())
        try:
            p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        except OSError as e:
            raise AnsibleError('cannot run {0}: {1}'.format(argv[0], to_native(e)))
        stdout, stderr = p.communicate(in_data)
        return p.returncode, stdout, stderr

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super(Connection, self).exec_command(cmd, in_data=in_data, sudoable=sudoable)
        args = []
        user = self._user(sudoable)
        if user:
            args += ['-l', user]
        args += ['--', self._target(), '/bin/sh', '-c', cmd]
        rc, stdout, stderr = self._malai(args, in_data=in_data)
        if rc == NOT_RUN and stderr.startswith(b'malai: '):
            raise AnsibleConnectionFailure(to_native(stderr.strip()))
        return rc, stdout, stderr

    def _copy(self, src, dst, what):
        rc, stdout, stderr = self._malai(['cp', src, dst])
        if rc != 0:
            raise AnsibleError('{0} failed: {1}'.format(what, to_native(stderr.strip())))

    def put_file(self, in_path, out_path):
        super(Connection, self).put_file(in_path, out_path)
        display.vvv(u'PUT {0} TO {1}'.format(in_path, out_path), host=self._target())
        if not os.path.exists(to_bytes(in_path, errors='surrogate_or_strict')):
            raise AnsibleFileNotFound('file or module does not exist: {0}'.format(to_native(in_path)))
        self._copy(in_path, '{0}:{1}'.format(self._target(), out_path), 'malai cp (put)')

    def fetch_file(self, in_path, out_path):
        super(Connection, self).fetch_file(in_path, out_path)
        display.vvv(u'FETCH {0} TO {1}'.format(in_path, out_path), host=self._target())
        self._copy('{0}:{1}'.format(self._target(), in_path), out_path, 'malai cp (fetch)')

    def close(self):
        self._connected = False
